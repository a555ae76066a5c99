#include "cli/server_commands.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/balanced_flags.h"
#include "cli/cli_args.h"
#include "cli/layer_id_flags.h"
#include "client/planner_client.h"
#include "client/report_parts.h"
#include "core/file_io.h"
#include "core/map_files.h"
#include "core/map_format.h"
#include "core/status_macros.h"
#include "proto/api_limits.h"
#include "proto/convert.h"

namespace eplb::cli {
namespace {

using client::PlannerClient;
using client::PlannerClientOptions;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr double kInfinity = std::numeric_limits<double>::infinity();
// The API's bounds and defaults (proto/api_limits.h), checked here before anything is sent.
using api::kDefaultIntervalSteps;  // used when some trigger flags are given
using api::kMaxSequence;
using api::kMaxStep;
using api::kMaxStepsPerReport;

// What a verb does once its flags are read: talks to the planner and prints to `out`.
using Action = std::function<absl::Status(PlannerClient& client, std::ostream& out)>;
// Reads a verb's own flags into an Action. INVALID_ARGUMENT is a usage error.
using ActionParser = absl::StatusOr<Action> (*)(const ParsedArgs& args);

constexpr std::array<FlagSpec, 8> kConnectionFlags = {{
    {"server", "HOST:PORT", "the planner (default: $EPLB_SERVER, else 127.0.0.1:50051)"},
    {"token", "TOKEN", "bearer token sent with every call (default: $EPLB_TOKEN)"},
    {"tls-ca", "FILE", "PEM CA certificates: use TLS, verify the planner against them"},
    {"tls-cert", "FILE", "PEM client certificate for mutual TLS (with --tls-key)"},
    {"tls-key", "FILE", "PEM private key of --tls-cert"},
    {"tls-server-name", "NAME", "name expected in the planner's certificate (default: its host)"},
    {"timeout-ms", "MS", "deadline of each call, in milliseconds (default 30000)"},
    {"help", "", "print this help"},
}};

// ---- Formatting ---------------------------------------------------------------------------------

std::string Hex(uint64_t hash) { return absl::StrFormat("%016x", hash); }

std::string EnumName(absl::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](char c) { return c == '_' ? '-' : static_cast<char>(std::tolower(c)); });
  return lower;
}

std::string CommitModeName(v1::CommitMode mode) {
  switch (mode) {
    case v1::COMMIT_MODE_IMMEDIATE:
      return "immediate";
    case v1::COMMIT_MODE_ACKED:
    case v1::COMMIT_MODE_UNSPECIFIED:
      return "acked";
    default:
      return EnumName(v1::CommitMode_Name(mode));
  }
}

std::string SmoothingText(const v1::Smoothing& smoothing) {
  if (smoothing.kind_case() == v1::Smoothing::kWindowSteps) {
    return absl::StrCat("window ", smoothing.window_steps(), " steps");
  }
  if (smoothing.kind_case() == v1::Smoothing::kEmaHalfLifeSteps) {
    return absl::StrCat("ema half-life ", smoothing.ema_half_life_steps(), " steps");
  }
  return "ema (default)";
}

// The balanced policy's options, as " (tolerance 0.01, ...)"; empty for other policies.
std::string BalancedText(const v1::DeploymentSpec& spec) {
  if (!spec.has_balanced()) return "";
  const v1::BalancedOptions& b = spec.balanced();
  std::string text = absl::StrCat(" (tolerance ", b.tolerance());
  if (b.max_received_per_rank() > 0) {
    absl::StrAppend(&text, ", at most ", b.max_received_per_rank(), " received per rank");
  }
  if (b.max_received_per_layer() > 0) {
    absl::StrAppend(&text, ", at most ", b.max_received_per_layer(), " received per layer");
  }
  if (b.min_gain() > 0) absl::StrAppend(&text, ", layer min gain ", b.min_gain());
  if (b.gain_per_move() > 0) absl::StrAppend(&text, ", gain per move ", b.gain_per_move());
  if (b.node_affinity()) absl::StrAppend(&text, ", node affinity");
  return absl::StrCat(text, ")");
}

// One line per deployment.
std::string DeploymentLine(const v1::Deployment& d) {
  const v1::DeploymentSpec& spec = d.spec();
  const v1::Shape& s = spec.shape();
  return absl::StrFormat(
      "%s  L=%d E=%d G=%d N=%d R=%d P=%d  policy %s%s  commit %s  %s  committed %d  latest %d  "
      "steps %d",
      spec.name(), s.num_layers(), s.num_logical_experts(), std::max(1, s.num_groups()),
      std::max(1, s.num_nodes()), s.num_ranks(), s.num_physical_experts(),
      spec.policy().empty() ? "(default)" : spec.policy(), BalancedText(spec),
      CommitModeName(spec.commit_mode()), SmoothingText(spec.smoothing()), d.committed_version(),
      d.latest_version(), d.steps_seen());
}

std::string VersionText(int64_t version) {
  return version == 0 ? std::string("candidate") : absl::StrCat("version ", version);
}

// A dry run's candidate has no state: it is never published.
std::string StateText(const v1::Plan& plan) {
  if (plan.state() == v1::PLAN_STATE_UNSPECIFIED) return "UNPUBLISHED";
  return v1::PlanState_Name(plan.state());
}

// "balancedness B -> A", or what stands for it on the initial plan (planned before any load).
std::string BalancednessText(const v1::Plan& plan) {
  if (plan.reason() == v1::INITIAL) return "balancedness - -> -";  // planned before any load
  return absl::StrFormat("balancedness %.4f -> %.4f", plan.metrics().balancedness_before(),
                         plan.metrics().balancedness_after());
}

// The summary of a plan, one line.
std::string PlanLine(const v1::Plan& plan) {
  const v1::PlanMetrics& m = plan.metrics();
  std::string line = absl::StrFormat(
      "%s  parent %d  %s  %s  policy %s  hash %s  %s  slots changed %d  experts moved %d  "
      "bytes %d",
      VersionText(plan.version()), plan.parent_version(), StateText(plan),
      v1::PlanReason_Name(plan.reason()), plan.policy(), Hex(plan.map_hash()),
      BalancednessText(plan), m.slots_changed(), m.experts_moved(), m.bytes_to_move());
  if (!plan.abort_reason().empty()) absl::StrAppend(&line, "  aborted: ", plan.abort_reason());
  return line;
}

// The line `watch` prints per update.
std::string WatchLine(const v1::Plan& plan) {
  std::string line = absl::StrFormat("%s  %s  %s  %s  hash %s", VersionText(plan.version()),
                                     StateText(plan), v1::PlanReason_Name(plan.reason()),
                                     BalancednessText(plan), Hex(plan.map_hash()));
  if (!plan.abort_reason().empty()) absl::StrAppend(&line, "  aborted: ", plan.abort_reason());
  return line;
}

// "ranks: ACTIVE 3, STAGED 1, FAILED 0, no ack 0; hash mismatch: ranks 2; failed: rank 1 (why)".
std::string RankAckLine(const v1::Plan& plan) {
  if (plan.ranks().empty()) return "ranks: no acknowledgements recorded";
  std::map<v1::AckState, int64_t> counts;
  std::vector<int32_t> mismatched;
  std::vector<std::string> failed;
  for (const v1::RankAck& ack : plan.ranks()) {
    ++counts[ack.state()];
    if (ack.hash_mismatch()) mismatched.push_back(ack.rank());
    if (ack.state() == v1::FAILED) {
      failed.push_back(ack.error_detail().empty()
                           ? absl::StrCat("rank ", ack.rank())
                           : absl::StrCat("rank ", ack.rank(), " (", ack.error_detail(), ")"));
    }
  }
  std::string line =
      absl::StrFormat("ranks: ACTIVE %d, STAGED %d, FAILED %d, no ack %d", counts[v1::ACTIVE],
                      counts[v1::STAGED], counts[v1::FAILED], counts[v1::ACK_STATE_UNSPECIFIED]);
  if (!mismatched.empty()) {
    absl::StrAppend(&line, "; hash mismatch: ranks ", absl::StrJoin(mismatched, ", "));
  }
  if (!failed.empty()) absl::StrAppend(&line, "; failed: ", absl::StrJoin(failed, ", "));
  return line;
}

// ---- Flag helpers -------------------------------------------------------------------------------

// A required integer flag in [lo, hi].
absl::StatusOr<int64_t> RequireInt(const ParsedArgs& args, absl::string_view name, int64_t lo,
                                   int64_t hi) {
  if (!args.Has(name)) return args.Require(name).status();
  return args.GetInt(name, 0, lo, hi);
}

// A non-empty string flag.
absl::StatusOr<std::string> RequireText(const ParsedArgs& args, absl::string_view name) {
  ASSIGN_OR_RETURN(std::string value, args.Require(name));
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is empty"));
  return value;
}

// Checks the response's map against its hash, as ranks do, so that a map damaged on the way is
// never written.
absl::StatusOr<ExpertMap> MapOfPlan(const v1::Plan& plan) {
  if (!plan.has_map()) {
    return absl::InternalError(
        absl::StrCat("the planner sent ", VersionText(plan.version()), " without its map"));
  }
  ASSIGN_OR_RETURN(ExpertMap map, ExpertMapFromProto(plan.map(), "plan.map"));
  if (map.Hash() != plan.map_hash()) {
    return absl::DataLossError(absl::StrCat("the map of ", VersionText(plan.version()),
                                            " hashes to ", Hex(map.Hash()), ", the planner says ",
                                            Hex(plan.map_hash())));
  }
  return map;
}

// ---- Verbs --------------------------------------------------------------------------------------

// create-deployment

constexpr std::array<FlagSpec, 18> kCreateOwnFlags = {{
    {"name", "D", "deployment name: 1-63 of [a-z0-9-], starting with a letter (required)"},
    {"num-layers", "L", "MoE layers (required)"},
    {"num-logical-experts", "E", "experts per layer (required)"},
    {"num-physical-experts", "P", "physical expert slots in all (required)"},
    {"num-ranks", "R", "ranks (GPUs) in the expert-parallel group (required)"},
    {"num-groups", "G", "expert groups (default 1)"},
    {"num-nodes", "N", "nodes (default 1)"},
    {"policy", "NAME", "placement policy (default: the planner's)"},
    {"bytes-per-expert", "B", "bytes of one expert's weights, for the bytes-to-move metric"},
    {"commit", "MODE", "immediate or acked (default acked: every rank stages a plan first)"},
    {"ema-half-life-steps", "H", "smooth load with an EMA of this half-life (default 1000)"},
    {"window-steps", "W", "smooth load as the mean of the last W steps instead"},
    {"interval-steps", "I", "consider rebalancing every I steps; 0: never (default 1000)"},
    {"min-steps", "M", "no automatic rebalance before M steps of load (default 0)"},
    {"min-gain", "X", "publish only if balancedness improves by X (default 0)"},
    {"ack-timeout-ms", "T", "time ranks have to stage a plan (default 60000)"},
    {"plan-history", "K", "plans kept (default 16)"},
    {"initial-map", "FILE", "the first plan's map (eplb, vllm-ascend, sglang or trtllm)"},
}};
constexpr auto kCreateFlags = Concat(Concat(kCreateOwnFlags, kBalancedFlags), kLayerIdFlags);

absl::StatusOr<Action> ParseCreate(const ParsedArgs& args) {
  v1::DeploymentSpec spec;
  ASSIGN_OR_RETURN(*spec.mutable_name(), RequireText(args, "name"));
  v1::Shape& shape = *spec.mutable_shape();
  ASSIGN_OR_RETURN(const int64_t layers, RequireInt(args, "num-layers", 1, kInt32Max));
  ASSIGN_OR_RETURN(const int64_t experts, RequireInt(args, "num-logical-experts", 1, kInt32Max));
  ASSIGN_OR_RETURN(const int64_t slots, RequireInt(args, "num-physical-experts", 1, kInt32Max));
  ASSIGN_OR_RETURN(const int64_t ranks, RequireInt(args, "num-ranks", 1, kInt32Max));
  ASSIGN_OR_RETURN(const int64_t groups, args.GetInt("num-groups", 0, 1, kInt32Max));
  ASSIGN_OR_RETURN(const int64_t nodes, args.GetInt("num-nodes", 0, 1, kInt32Max));
  shape.set_num_layers(static_cast<int32_t>(layers));
  shape.set_num_logical_experts(static_cast<int32_t>(experts));
  shape.set_num_physical_experts(static_cast<int32_t>(slots));
  shape.set_num_ranks(static_cast<int32_t>(ranks));
  shape.set_num_groups(static_cast<int32_t>(groups));
  shape.set_num_nodes(static_cast<int32_t>(nodes));
  spec.set_policy(args.Get("policy"));
  ASSIGN_OR_RETURN(const std::optional<BalancedFlags> balanced,
                   ParseBalancedFlags(args, spec.policy()));
  if (balanced) {
    v1::BalancedOptions& b = *spec.mutable_balanced();
    if (balanced->tolerance_given) b.set_tolerance(balanced->options.tolerance);
    b.set_max_received_per_rank(balanced->options.max_received_per_rank);
    b.set_max_received_per_layer(balanced->options.max_received_per_layer);
    b.set_min_gain(balanced->options.min_gain);
    b.set_gain_per_move(balanced->options.gain_per_move);
    b.set_node_affinity(balanced->options.node_affinity);
  }
  ASSIGN_OR_RETURN(const int64_t bytes, args.GetInt("bytes-per-expert", 0, 0, kInt64Max));
  spec.set_bytes_per_expert(bytes);

  if (args.Has("commit")) {
    const std::string mode = args.Get("commit");
    if (mode == "immediate") {
      spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
    } else if (mode == "acked") {
      spec.set_commit_mode(v1::COMMIT_MODE_ACKED);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--commit = \"", mode, "\" is not one of immediate, acked"));
    }
  }

  if (args.Has("ema-half-life-steps") && args.Has("window-steps")) {
    return absl::InvalidArgumentError(
        "--ema-half-life-steps and --window-steps exclude each other");
  }
  if (args.Has("ema-half-life-steps")) {
    ASSIGN_OR_RETURN(const int64_t h, args.GetInt("ema-half-life-steps", 0, 1, kInt64Max));
    spec.mutable_smoothing()->set_ema_half_life_steps(h);
  } else if (args.Has("window-steps")) {
    ASSIGN_OR_RETURN(const int64_t w, args.GetInt("window-steps", 0, 1, kInt64Max));
    spec.mutable_smoothing()->set_window_steps(w);
  }

  if (args.Has("interval-steps") || args.Has("min-steps") || args.Has("min-gain")) {
    // A Trigger message replaces the whole default, so keep the default interval unless given.
    v1::Trigger& trigger = *spec.mutable_trigger();
    ASSIGN_OR_RETURN(const int64_t interval,
                     args.GetInt("interval-steps", kDefaultIntervalSteps, 0, kInt64Max));
    ASSIGN_OR_RETURN(const int64_t min_steps, args.GetInt("min-steps", 0, 0, kInt64Max));
    ASSIGN_OR_RETURN(const double min_gain, args.GetDouble("min-gain", 0, -kInfinity, kInfinity));
    trigger.set_interval_steps(interval);
    trigger.set_min_steps(min_steps);
    trigger.set_min_gain(min_gain);
  }
  ASSIGN_OR_RETURN(const int64_t ack_timeout_ms, args.GetInt("ack-timeout-ms", 0, 0, kInt64Max));
  spec.set_ack_timeout_ms(ack_timeout_ms);
  ASSIGN_OR_RETURN(const int64_t history, args.GetInt("plan-history", 0, 0, kInt32Max));
  spec.set_plan_history(static_cast<int32_t>(history));
  std::optional<std::string> initial_map;
  if (args.Has("initial-map")) {
    ASSIGN_OR_RETURN(initial_map, RequireText(args, "initial-map"));
  }
  ASSIGN_OR_RETURN(const std::optional<LayerIds> layer_ids, ParseLayerIdFlags(args));
  if (layer_ids && !initial_map) {
    return absl::InvalidArgumentError("the layer ids apply to --initial-map, which is not given");
  }
  return Action([spec, initial_map, layer_ids](PlannerClient& client,
                                               std::ostream& out) -> absl::Status {
    v1::DeploymentSpec request = spec;
    if (initial_map) {
      // Read here, in any format eplbctl reads: the planner gets the map, not the file.
      ASSIGN_OR_RETURN(const ParsedExpertMap parsed,
                       ReadExpertMapFile(*initial_map,
                                         {.num_logical_experts = spec.shape().num_logical_experts(),
                                          .num_ranks = spec.shape().num_ranks(),
                                          .layer_ids = layer_ids}));
      ExpertMapToProto(parsed.map, request.mutable_initial_map());
    }
    ASSIGN_OR_RETURN(const v1::Deployment deployment, client.CreateDeployment(request));
    out << DeploymentLine(deployment) << "\n";
    return absl::OkStatus();
  });
}

// list

absl::StatusOr<Action> ParseList(const ParsedArgs&) {
  return Action([](PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const std::vector<v1::Deployment> deployments, client.ListDeployments());
    for (const v1::Deployment& d : deployments) out << DeploymentLine(d) << "\n";
    return absl::OkStatus();
  });
}

// delete-deployment

constexpr std::array<FlagSpec, 1> kDeleteFlags = {{
    {"name", "D", "the deployment (required)"},
}};

absl::StatusOr<Action> ParseDelete(const ParsedArgs& args) {
  ASSIGN_OR_RETURN(const std::string name, RequireText(args, "name"));
  return Action([name](PlannerClient& client, std::ostream& out) -> absl::Status {
    RETURN_IF_ERROR(client.DeleteDeployment(name));
    out << "deleted " << name << "\n";
    return absl::OkStatus();
  });
}

// report

constexpr std::array<FlagSpec, 9> kReportFlags = {{
    {"deployment", "D", "the deployment (required)"},
    {"rank", "R", "the reporting rank (required)"},
    {"load", "FILE", "counts per logical expert: {\"load\": [[…E…] × L]} (required)"},
    {"steps", "S", "steps the counts cover (default 1)"},
    {"first-step", "F", "the first of them (default 0)"},
    {"sequence", "N",
     "the report's sequence number (default 1); a load over 1 MiB is sent as several reports "
     "over layer ranges, numbered N, N+1, …"},
    {"plan-version", "V", "the plan the counts were taken under (default: the committed one)"},
    {"session", "X", "the reporting session, a positive integer (default: a random one)"},
    {"repeat", "K", "send the report K times on the stream, to check deduplication (default 1)"},
}};

absl::StatusOr<Action> ParseReport(const ParsedArgs& args) {
  v1::LoadReport report;
  ASSIGN_OR_RETURN(*report.mutable_deployment(), RequireText(args, "deployment"));
  ASSIGN_OR_RETURN(const int64_t rank, RequireInt(args, "rank", 0, kInt32Max));
  report.set_rank(static_cast<int32_t>(rank));
  ASSIGN_OR_RETURN(const std::string load_path, RequireText(args, "load"));
  ASSIGN_OR_RETURN(const int64_t steps, args.GetInt("steps", 1, 1, kMaxStepsPerReport));
  ASSIGN_OR_RETURN(const int64_t first_step, args.GetInt("first-step", 0, 0, kMaxStep));
  report.set_first_step(first_step);
  report.set_last_step(first_step + steps - 1);
  ASSIGN_OR_RETURN(const int64_t sequence, args.GetInt("sequence", 1, 1, kMaxSequence));
  report.set_sequence(sequence);
  ASSIGN_OR_RETURN(const int64_t plan_version, args.GetInt("plan-version", 0, 1, kInt64Max));
  report.set_plan_version(plan_version);
  ASSIGN_OR_RETURN(int64_t session, args.GetInt("session", 0, 1, kInt64Max));
  if (session == 0) {
    std::random_device random;
    std::uniform_int_distribution<int64_t> pick(1, kInt64Max);
    session = pick(random);
  }
  report.set_session(static_cast<uint64_t>(session));
  ASSIGN_OR_RETURN(const int64_t repeat, args.GetInt("repeat", 1, 1, 1000));
  report.set_counts_kind(v1::LoadReport::LOGICAL);

  return Action([report, load_path, repeat](PlannerClient& client,
                                            std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const LoadMatrix load, ReadLoadFile(load_path));
    v1::LoadReport filled = report;
    for (int32_t l = 0; l < load.num_layers; ++l) {
      const auto row = load.row(l);
      filled.add_layers()->mutable_counts()->Assign(row.begin(), row.end());
    }
    if (filled.plan_version() == 0) {
      ASSIGN_OR_RETURN(const v1::Deployment deployment, client.GetDeployment(report.deployment()));
      filled.set_plan_version(deployment.committed_version());
    }
    // A load too large for one message goes as several reports over layer ranges.
    const std::vector<v1::LoadReport> parts =
        client::SplitByLayers(filled, client::kDefaultMaxReportBytes);
    std::vector<v1::LoadReport> reports;
    for (int64_t i = 0; i < repeat; ++i) reports.insert(reports.end(), parts.begin(), parts.end());
    ASSIGN_OR_RETURN(const v1::ReportSummary summary, client.ReportLoad(reports));
    out << absl::StrFormat(
        "rank %d: accepted %d, duplicates %d, last sequence %d (steps %d-%d, plan version %d)\n",
        filled.rank(), summary.accepted(), summary.duplicates(), summary.last_sequence(),
        filled.first_step(), filled.last_step(), filled.plan_version());
    return absl::OkStatus();
  });
}

// rebalance

constexpr std::array<FlagSpec, 2> kRebalanceFlags = {{
    {"deployment", "D", "the deployment (required)"},
    {"dry-run", "", "compute and show the candidate; publish nothing"},
}};

absl::StatusOr<Action> ParseRebalance(const ParsedArgs& args) {
  ASSIGN_OR_RETURN(const std::string deployment, RequireText(args, "deployment"));
  const bool dry_run = args.Has("dry-run");
  return Action([deployment, dry_run](PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const v1::Plan plan, client.Rebalance(deployment, dry_run));
    out << PlanLine(plan) << "\n";
    return absl::OkStatus();
  });
}

// get-plan

constexpr std::array<FlagSpec, 4> kGetPlanOwnFlags = {{
    {"deployment", "D", "the deployment (required)"},
    {"version", "V", "the plan's version (default: the newest committed plan)"},
    {"output", "FILE", "write the plan's map here, atomically"},
    {"format", "NAME",
     "map format of --output: eplb, vllm-ascend, sglang or trtllm (default eplb)"},
}};
constexpr auto kGetPlanFlags = Concat(kGetPlanOwnFlags, kLayerIdFlags);

absl::StatusOr<Action> ParseGetPlan(const ParsedArgs& args) {
  ASSIGN_OR_RETURN(const std::string deployment, RequireText(args, "deployment"));
  ASSIGN_OR_RETURN(const int64_t version, args.GetInt("version", 0, 1, kInt64Max));
  std::optional<std::string> output;
  if (args.Has("output")) {
    ASSIGN_OR_RETURN(output, RequireText(args, "output"));
  }
  if (args.Has("format") && !output) {
    return absl::InvalidArgumentError("--format applies to --output, which is not given");
  }
  ASSIGN_OR_RETURN(const MapFormat format, ParseMapFormat(args.Get("format", "eplb")));
  ASSIGN_OR_RETURN(const std::optional<LayerIds> layer_ids, ParseLayerIdFlags(args));
  if (layer_ids && !output) {
    return absl::InvalidArgumentError("the layer ids apply to --output, which is not given");
  }
  if (output) RETURN_IF_ERROR(RequireLayerIdsFor(format, layer_ids));
  return Action([deployment, version, output, format, layer_ids](
                    PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const v1::Plan plan, client.GetPlan(deployment, version));
    ASSIGN_OR_RETURN(const ExpertMap map, MapOfPlan(plan));
    if (layer_ids) RETURN_IF_ERROR(layer_ids->CheckFits(map.num_layers(), "the plan's map"));
    if (output) {
      RETURN_IF_ERROR(WriteExpertMapFile(*output, map, format, plan.version(),
                                         layer_ids ? &*layer_ids : nullptr));
    }
    out << PlanLine(plan) << "\n";
    if (output) {
      out << absl::StrFormat("wrote %s (%s, version %d)\n", *output, MapFormatName(format),
                             plan.version());
    }
    return absl::OkStatus();
  });
}

// list-plans

constexpr std::array<FlagSpec, 1> kDeploymentFlag = {{
    {"deployment", "D", "the deployment (required)"},
}};

absl::StatusOr<Action> ParseListPlans(const ParsedArgs& args) {
  ASSIGN_OR_RETURN(const std::string deployment, RequireText(args, "deployment"));
  return Action([deployment](PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const std::vector<v1::Plan> plans, client.ListPlans(deployment));
    for (const v1::Plan& plan : plans) out << PlanLine(plan) << "\n";
    return absl::OkStatus();
  });
}

// get-load

constexpr std::array<FlagSpec, 2> kGetLoadFlags = {{
    {"deployment", "D", "the deployment (required)"},
    {"output", "FILE", "write the smoothed load here as a load file, atomically"},
}};

std::string BalancednessText(std::span<const double> per_layer) {
  if (per_layer.empty()) return "balancedness n/a";
  double sum = 0;
  double min = per_layer.front();
  for (const double b : per_layer) {
    sum += b;
    min = std::min(min, b);
  }
  return absl::StrFormat("balancedness mean %.4f min %.4f", sum / per_layer.size(), min);
}

absl::StatusOr<Action> ParseGetLoad(const ParsedArgs& args) {
  ASSIGN_OR_RETURN(const std::string deployment, RequireText(args, "deployment"));
  std::optional<std::string> output;
  if (args.Has("output")) {
    ASSIGN_OR_RETURN(output, RequireText(args, "output"));
  }
  return Action([deployment, output](PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const v1::GetLoadResponse response, client.GetLoad(deployment));
    const int64_t cells = int64_t{response.num_layers()} * response.num_logical_experts();
    if (response.smoothed_load_size() != cells) {
      return absl::InternalError(absl::StrCat(
          "the planner sent ", response.smoothed_load_size(), " load values for ",
          response.num_layers(), " layers of ", response.num_logical_experts(), " experts"));
    }
    const std::span<const double> balancedness(response.balancedness().data(),
                                               response.balancedness().size());
    if (output) {
      LoadMatrix load{.num_layers = response.num_layers(),
                      .num_experts = response.num_logical_experts(),
                      .values = {response.smoothed_load().begin(), response.smoothed_load().end()}};
      RETURN_IF_ERROR(WriteFileAtomically(*output, LoadToJson(load)));
    }
    const std::string steps =
        response.steps_seen() == 0
            ? std::string("no load reported yet")
            : absl::StrFormat("%d steps seen (steps %d-%d)", response.steps_seen(),
                              response.first_step(), response.last_step());
    out << absl::StrFormat("%s: %d layers x %d experts, %s, plan version %d, %s\n", deployment,
                           response.num_layers(), response.num_logical_experts(), steps,
                           response.plan_version(), BalancednessText(balancedness));
    if (output) {
      out << "wrote " << *output << "\n";
    } else {
      for (int i = 0; i < response.balancedness_size(); ++i) {
        out << absl::StrFormat("layer %d  balancedness %.4f\n", i, response.balancedness(i));
      }
    }
    return absl::OkStatus();
  });
}

// status

absl::StatusOr<Action> ParseStatus(const ParsedArgs& args) {
  ASSIGN_OR_RETURN(const std::string deployment, RequireText(args, "deployment"));
  return Action([deployment](PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(const v1::Deployment d, client.GetDeployment(deployment));
    ASSIGN_OR_RETURN(const std::vector<v1::Plan> plans, client.ListPlans(deployment));
    ASSIGN_OR_RETURN(const v1::GetLoadResponse load, client.GetLoad(deployment));
    out << absl::StrFormat("%s: committed version %d, latest version %d, %d steps seen\n",
                           deployment, d.committed_version(), d.latest_version(), d.steps_seen());
    // The committed plan and every newer one (in flight or aborted), newest first.
    for (const v1::Plan& plan : plans) {
      if (plan.version() < d.committed_version()) break;
      out << PlanLine(plan) << "\n  " << RankAckLine(plan) << "\n";
    }
    const std::span<const double> balancedness(load.balancedness().data(),
                                               load.balancedness().size());
    out << absl::StrFormat("current load: %s (plan version %d)\n", BalancednessText(balancedness),
                           load.plan_version());
    return absl::OkStatus();
  });
}

// watch

constexpr std::array<FlagSpec, 5> kWatchFlags = {{
    {"deployment", "D", "the deployment (required)"},
    {"rank", "R", "watch as rank R (default -1: an observer that never acknowledges)"},
    {"known-version", "V", "the newest version already held: older plans are not shown"},
    {"count", "N", "stop after N updates (default: until the stream ends)"},
    {"ack", "",
     "acknowledge as --rank does: PENDING plans as STAGED, COMMITTED as ACTIVE, with the "
     "received map's hash"},
}};

// The acknowledgement a rank that applies every plan at once would send, if any.
std::optional<v1::WatchPlansRequest::Ack> AckFor(const v1::WatchPlansResponse& response) {
  const v1::Plan& plan = response.plan();
  v1::WatchPlansRequest::Ack ack;
  ack.set_version(plan.version());
  ack.set_nonce(response.nonce());
  if (plan.state() == v1::PENDING) {
    ack.set_state(v1::STAGED);
  } else if (plan.state() == v1::COMMITTED) {
    ack.set_state(v1::ACTIVE);
  } else {
    return std::nullopt;
  }
  absl::StatusOr<ExpertMap> map = MapOfPlan(plan);
  if (map.ok()) {
    ack.set_map_hash(map->Hash());
  } else {
    ack.set_state(v1::FAILED);
    ack.set_error_detail(std::string(map.status().message()));
  }
  return ack;
}

absl::StatusOr<Action> ParseWatch(const ParsedArgs& args) {
  v1::WatchPlansRequest::Subscribe subscribe;
  ASSIGN_OR_RETURN(*subscribe.mutable_deployment(), RequireText(args, "deployment"));
  ASSIGN_OR_RETURN(const int64_t rank, args.GetInt("rank", -1, -1, kInt32Max));
  subscribe.set_rank(static_cast<int32_t>(rank));
  ASSIGN_OR_RETURN(const int64_t known, args.GetInt("known-version", 0, 0, kInt64Max));
  subscribe.set_known_version(known);
  ASSIGN_OR_RETURN(const int64_t count, args.GetInt("count", 0, 1, kInt64Max));
  const bool ack = args.Has("ack");
  if (ack && rank < 0) return absl::InvalidArgumentError("--ack needs --rank");
  return Action([subscribe, count, ack](PlannerClient& client, std::ostream& out) -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<PlannerClient::Watch> watch, client.StartWatch(subscribe));
    for (int64_t updates = 0; count == 0 || updates < count; ++updates) {
      ASSIGN_OR_RETURN(const v1::WatchPlansResponse response, watch->Next());
      out << WatchLine(response.plan()) << std::endl;
      if (!ack) continue;
      if (const auto reply = AckFor(response); reply.has_value()) {
        RETURN_IF_ERROR(watch->Ack(*reply));
      }
    }
    watch->Cancel();
    return absl::OkStatus();
  });
}

// ---- The verb table -----------------------------------------------------------------------------

struct ServerVerb {
  absl::string_view name;
  absl::string_view summary;   // one line for eplbctl's usage
  absl::string_view synopsis;  // the verb's usage line(s), after "usage: eplbctl "
  std::span<const FlagSpec> flags;
  ActionParser parse;
};

const std::array<ServerVerb, 10>& Verbs() {
  static const std::array<ServerVerb, 10> verbs = {{
      {"create-deployment", "create a deployment (identical re-create: no change)",
       "create-deployment --name D --num-layers L --num-logical-experts E\n"
       "       --num-physical-experts P --num-ranks R [--num-groups G] [--num-nodes N]\n"
       "       [--policy NAME] [--bytes-per-expert B] [--commit immediate|acked]\n"
       "       [--ema-half-life-steps H | --window-steps W] [--interval-steps I] [--min-steps M]\n"
       "       [--min-gain X] [--ack-timeout-ms T] [--plan-history K] [--initial-map FILE]\n"
       "       [--layer-ids LIST | --first-moe-layer K] [--num-hidden-layers H]\n"
       "       [--tolerance X] [--max-received-per-rank M] [--max-received-per-layer M]\n"
       "       [--layer-min-gain X] [--node-affinity]",
       kCreateFlags, &ParseCreate},
      {"list", "list the deployments, one per line", "list", {}, &ParseList},
      {"delete-deployment", "delete a deployment, its plans and its load",
       "delete-deployment --name D", kDeleteFlags, &ParseDelete},
      {"report", "report one rank's load for some steps",
       "report --deployment D --rank R --load LOAD.json [--steps S] [--first-step F]\n"
       "       [--sequence N] [--plan-version V] [--session X] [--repeat K]",
       kReportFlags, &ParseReport},
      {"rebalance", "compute a plan from the current load now and publish it",
       "rebalance --deployment D [--dry-run]", kRebalanceFlags, &ParseRebalance},
      {"get-plan", "show a plan; write its map with --output",
       "get-plan --deployment D [--version V] [--output MAP.json]\n"
       "       [--format eplb|vllm-ascend|sglang|trtllm]\n"
       "       [--layer-ids LIST | --first-moe-layer K] [--num-hidden-layers H]",
       kGetPlanFlags, &ParseGetPlan},
      {"list-plans", "list the retained plans, newest first", "list-plans --deployment D",
       kDeploymentFlag, &ParseListPlans},
      {"get-load", "show the smoothed load; write it with --output",
       "get-load --deployment D [--output LOAD.json]", kGetLoadFlags, &ParseGetLoad},
      {"status", "versions, acknowledgements per rank, balancedness", "status --deployment D",
       kDeploymentFlag, &ParseStatus},
      {"watch", "print a line per plan update",
       "watch --deployment D [--rank R [--ack]] [--known-version V] [--count N]", kWatchFlags,
       &ParseWatch},
  }};
  return verbs;
}

const ServerVerb* FindVerb(absl::string_view name) {
  for (const ServerVerb& verb : Verbs()) {
    if (verb.name == name) return &verb;
  }
  return nullptr;
}

std::string VerbUsage(const ServerVerb& verb) {
  std::string usage =
      absl::StrCat("usage: eplbctl ", verb.synopsis, "\n\n", absl::StrCat(verb.summary), ".\n\n");
  if (!verb.flags.empty()) absl::StrAppend(&usage, "flags:\n", FlagHelp(verb.flags), "\n");
  absl::StrAppend(&usage, "connection flags:\n", FlagHelp(kConnectionFlags));
  return usage;
}

absl::StatusOr<PlannerClientOptions> ReadConnection(const ParsedArgs& args,
                                                    const ConnectionDefaults& defaults) {
  PlannerClientOptions options;
  options.server = args.Get("server", defaults.server);
  if (options.server.empty()) return absl::InvalidArgumentError("--server is empty");
  options.bearer_token = args.Get("token", defaults.token);
  options.tls_ca_file = args.Get("tls-ca");
  options.tls_cert_file = args.Get("tls-cert");
  options.tls_key_file = args.Get("tls-key");
  options.tls_server_name = args.Get("tls-server-name");
  if (args.Has("tls-cert") != args.Has("tls-key")) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (options.tls_ca_file.empty() && (args.Has("tls-cert") || args.Has("tls-server-name"))) {
    return absl::InvalidArgumentError(
        absl::StrCat(args.Has("tls-cert") ? "--tls-cert" : "--tls-server-name", " needs --tls-ca"));
  }
  ASSIGN_OR_RETURN(const int64_t timeout_ms, args.GetInt("timeout-ms", 30'000, 1, 86'400'000));
  options.rpc_timeout = absl::Milliseconds(timeout_ms);
  return options;
}

// Names the server in connection errors, which otherwise say only "failed to connect".
absl::Status WithServer(const absl::Status& status, absl::string_view server) {
  if (status.code() != absl::StatusCode::kUnavailable &&
      status.code() != absl::StatusCode::kDeadlineExceeded) {
    return status;
  }
  absl::Status named(status.code(), absl::StrCat(status.message(), " (server ", server, ")"));
  status.ForEachPayload([&named](absl::string_view url, const absl::Cord& payload) {
    named.SetPayload(url, payload);
  });
  return named;
}

}  // namespace

bool IsServerCommand(absl::string_view verb) { return FindVerb(verb) != nullptr; }

int RunServerCommand(absl::string_view name, std::span<const std::string> args,
                     const ConnectionDefaults& defaults, std::ostream& out, std::ostream& err) {
  const ServerVerb* verb = FindVerb(name);
  if (verb == nullptr) {
    err << "eplbctl: unknown command \"" << name << "\"\n";
    return 2;
  }
  auto usage_error = [&](const absl::Status& status) {
    err << "eplbctl " << verb->name << ": " << status.message() << " (see eplbctl " << verb->name
        << " --help)\n";
    return 2;
  };
  std::vector<FlagSpec> flags(verb->flags.begin(), verb->flags.end());
  flags.insert(flags.end(), kConnectionFlags.begin(), kConnectionFlags.end());
  auto parsed = ParseArgs(args, flags);
  if (!parsed.ok()) return usage_error(parsed.status());
  if (parsed->Has("help")) {
    out << VerbUsage(*verb);
    return 0;
  }
  auto action = verb->parse(*parsed);
  if (!action.ok()) return usage_error(action.status());
  auto options = ReadConnection(*parsed, defaults);
  if (!options.ok()) return usage_error(options.status());

  auto fail = [&err](const absl::Status& status) {
    err << "eplbctl: " << StatusToDisplayString(status) << "\n";
    return 1;
  };
  auto client = PlannerClient::Create(*options);
  if (!client.ok()) return fail(client.status());
  const absl::Status status = (*action)(**client, out);
  out.flush();
  if (!status.ok()) return fail(WithServer(status, options->server));
  return 0;
}

std::string ServerCommandsHelp() {
  std::string help;
  for (const ServerVerb& verb : Verbs()) {
    absl::StrAppendFormat(&help, "  %-18s %s\n", verb.name, verb.summary);
  }
  return help;
}

}  // namespace eplb::cli
