#include "cli/plan_command.h"

#include <array>
#include <chrono>
#include <optional>
#include <ostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/balanced_flags.h"
#include "cli/cli_args.h"
#include "cli/layer_id_flags.h"
#include "core/balanced_policy.h"
#include "core/contiguous_policy.h"
#include "core/load_formats.h"
#include "core/map_files.h"
#include "core/map_format.h"
#include "core/metrics.h"
#include "core/policy.h"
#include "core/status_macros.h"

namespace eplb::cli {
namespace {

constexpr std::array<FlagSpec, 17> kOwnFlags = {{
    {"load", "PATH",
     "the load: a file {\"load\": [[…E…] × L]}, or as --load-format says (required unless "
     "--policy contiguous)"},
    {"load-format", "NAME",
     "eplb (default), sglang (its logical_count JSON) or trtllm-stats (a directory of its "
     "expert statistics)"},
    {"iterations", "A-B",
     "trtllm-stats: sum iterations A ≤ i < B, as EXPERT_STATISTIC_ITER_RANGE (default: all)"},
    {"num-physical-experts", "P", "physical expert slots in all (required)"},
    {"num-ranks", "R", "ranks (GPUs) in the expert-parallel group (required)"},
    {"num-groups", "G", "expert groups (default 1)"},
    {"num-nodes", "N", "nodes (default 1)"},
    {"num-layers", "L", "MoE layers (required without --load; must match it otherwise)"},
    {"num-logical-experts", "E", "experts per layer (required without --load; must match it)"},
    {"policy", "NAME", "placement policy: contiguous, deepseek or balanced (default balanced)"},
    {"previous", "FILE", "the map in use (any --format): compare with it and plan from it"},
    {"output", "FILE", "write the map here, atomically (default: standard output)"},
    {"format", "NAME", "eplb, vllm-ascend, sglang or trtllm (default eplb)"},
    {"bytes-per-expert", "B", "bytes of one expert's weights, to report the bytes to move"},
    {"replica-shares", "",
     "write each replica's share of its expert's tokens that balances the ranks best into the map "
     "(replica_share; --format eplb) and print the balance it routes to"},
    {"per-layer", "", "print the balancedness of every layer, before and after"},
    {"help", "", "print this help"},
}};
constexpr auto kPlanFlags = Concat(Concat(kOwnFlags, kBalancedFlags), kLayerIdFlags);

struct PlanOptions {
  DeploymentShape shape;
  std::string policy = "balanced";
  std::optional<std::string> load_path, previous_path, output_path;
  LoadFormat load_format = LoadFormat::kEplb;
  std::optional<std::pair<int64_t, int64_t>> iterations;
  MapFormat format = MapFormat::kEplb;
  int64_t bytes_per_expert = 0;
  std::optional<BalancedFlags> balanced;  // balanced's options, when any was given
  std::optional<LayerIds> layer_ids;      // how --previous and --output number rows
  bool per_layer = false;
  bool replica_shares = false;  // compute and write optimal routing shares
};

absl::StatusOr<PlanOptions> ReadOptions(const ParsedArgs& args) {
  PlanOptions o;
  using L = ShapeLimits;
  ASSIGN_OR_RETURN(o.shape.num_physical_experts,
                   args.GetInt("num-physical-experts", -1, 1,
                               int64_t{L::kMaxRedundancyFactor} * L::kMaxLogicalExperts));
  if (o.shape.num_physical_experts < 0) return args.Require("num-physical-experts").status();
  ASSIGN_OR_RETURN(o.shape.num_ranks, args.GetInt("num-ranks", -1, 1, L::kMaxRanks));
  if (o.shape.num_ranks < 0) return args.Require("num-ranks").status();
  ASSIGN_OR_RETURN(o.shape.num_groups, args.GetInt("num-groups", 1, 1, L::kMaxLogicalExperts));
  ASSIGN_OR_RETURN(o.shape.num_nodes, args.GetInt("num-nodes", 1, 1, L::kMaxRanks));
  ASSIGN_OR_RETURN(o.shape.num_layers, args.GetInt("num-layers", 0, 1, L::kMaxLayers));
  ASSIGN_OR_RETURN(o.shape.num_logical_experts,
                   args.GetInt("num-logical-experts", 0, 1, L::kMaxLogicalExperts));
  ASSIGN_OR_RETURN(o.bytes_per_expert, args.GetInt("bytes-per-expert", 0, 0, kMaxBytesPerExpert));
  o.policy = args.Get("policy", o.policy);
  RETURN_IF_ERROR(CreatePolicy(o.policy).status());
  ASSIGN_OR_RETURN(o.balanced, ParseBalancedFlags(args, o.policy));
  ASSIGN_OR_RETURN(o.format, ParseMapFormat(args.Get("format", "eplb")));
  ASSIGN_OR_RETURN(o.layer_ids, ParseLayerIdFlags(args));
  ASSIGN_OR_RETURN(o.load_format, ParseLoadFormat(args.Get("load-format", "eplb")));
  // TensorRT-LLM's statistics name their layers: they number the output when no flag does.
  if (o.load_format != LoadFormat::kTrtllmStats) {
    RETURN_IF_ERROR(RequireLayerIdsFor(o.format, o.layer_ids));
  }
  if (args.Has("iterations")) {
    if (o.load_format != LoadFormat::kTrtllmStats) {
      return absl::InvalidArgumentError("--iterations applies to --load-format trtllm-stats");
    }
    const std::vector<std::string> ends = absl::StrSplit(args.Get("iterations"), '-');
    int64_t first = 0, last = 0;
    if (ends.size() != 2 || !absl::SimpleAtoi(ends[0], &first) ||
        !absl::SimpleAtoi(ends[1], &last) || first < 0 || last <= first) {
      return absl::InvalidArgumentError(absl::StrCat("--iterations = \"", args.Get("iterations"),
                                                     "\" is not A-B with 0 ≤ A < B"));
    }
    o.iterations = std::make_pair(first, last);
  }
  if (args.Has("load")) o.load_path = args.Get("load");
  if (args.Has("previous")) o.previous_path = args.Get("previous");
  if (args.Has("output")) o.output_path = args.Get("output");
  o.per_layer = args.Has("per-layer");
  o.replica_shares = args.Has("replica-shares");
  if (o.replica_shares && o.format != MapFormat::kEplb) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replica-shares needs --format eplb: ", MapFormatName(o.format),
                     " cannot carry routing shares"));
  }
  if (o.replica_shares && !o.load_path) {
    return absl::InvalidArgumentError("--replica-shares needs --load: shares follow the load");
  }
  if (!o.load_path) {
    if (o.policy != ContiguousPolicy::kName) {
      return absl::InvalidArgumentError(absl::StrCat("--load is required by --policy ", o.policy));
    }
    if (o.shape.num_layers == 0) return args.Require("num-layers").status();
    if (o.shape.num_logical_experts == 0) return args.Require("num-logical-experts").status();
  }
  return o;
}

absl::StatusOr<ParsedExpertMap> ReadPrevious(const std::string& path, const DeploymentShape& shape,
                                             const std::optional<LayerIds>& layer_ids) {
  ASSIGN_OR_RETURN(ParsedExpertMap map,
                   ReadExpertMapFile(path, {.num_logical_experts = shape.num_logical_experts,
                                            .num_ranks = shape.num_ranks,
                                            .layer_ids = layer_ids}));
  if (absl::Status st = map.map.CheckFits(shape); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
  }
  return map;
}

// `shares`: the routing shares written with the map (empty: none).
void PrintSummary(const PlanOptions& o, const ExpertMap& map, const LoadMatrix* load,
                  std::span<const double> shares, const ExpertMap& baseline,
                  bool baseline_is_previous, double plan_ms, std::ostream& err) {
  const DeploymentShape& s = o.shape;
  err << absl::StrFormat(
      "policy %s: %d layers, %d experts (%d groups), %d slots on %d ranks (%d nodes), %.2f ms\n",
      o.policy, s.num_layers, s.num_logical_experts, s.num_groups, s.num_physical_experts,
      s.num_ranks, s.num_nodes, plan_ms);
  const char* baseline_name = baseline_is_previous ? "previous" : "contiguous";
  if (load != nullptr) {
    const ExpertMap* evaluated[] = {&baseline, &map};
    const std::vector<MapQuality> qualities = EvaluateMaps(evaluated, *load);
    const MapQuality& before = qualities[0];
    const MapQuality& after = qualities[1];
    std::optional<RoutedBalance> routed;
    if (!shares.empty()) routed = EvaluateRouting(map, *load, shares);
    if (o.per_layer) {
      err << absl::StrFormat("%5s  %-12s %-12s %s", "layer", baseline_name, "planned",
                             routed ? "max/bound    weighted\n" : "max/bound\n");
      for (int32_t l = 0; l < s.num_layers; ++l) {
        err << absl::StrFormat("%5d  %-12.4f %-12.4f %.4f", l, before.layers[l].balancedness,
                               after.layers[l].balancedness, after.layers[l].max_over_bound);
        err << (routed ? absl::StrFormat("       %.4f\n", routed->balancedness[l]) : "\n");
      }
    }
    err << absl::StrFormat("balancedness  %-10s min %.4f  mean %.4f\n", baseline_name,
                           before.min_balancedness, before.mean_balancedness);
    err << absl::StrFormat("balancedness  %-10s min %.4f  mean %.4f  (max/bound mean %.4f",
                           "planned", after.min_balancedness, after.mean_balancedness,
                           after.mean_max_over_bound);
    // With few slots per rank the count bound (core/metrics.h CountLowerBound) is tighter.
    if (CountLowerBoundApplies(s.num_logical_experts, s.num_physical_experts, s.num_ranks)) {
      err << absl::StrFormat(", max/count bound %.4f", after.mean_max_over_count_bound);
    }
    err << ")\n";
    if (routed) {
      err << absl::StrFormat(
          "balancedness  %-10s min %.4f  mean %.4f  (routed by the replica shares in the map)\n",
          "weighted", routed->min_balancedness, routed->mean_balancedness);
    }
    if (s.num_nodes > 1) {
      const RoutingModel model;
      const ExpertMap* maps[] = {&baseline, &map};
      const std::vector<TrafficShareEstimate> shares =
          EstimateMeanCrossNodeTrafficShares(maps, *load, s.num_groups, s.num_nodes, model);
      const TrafficShareEstimate& before_share = shares[0];
      const TrafficShareEstimate& after_share = shares[1];
      err << absl::StrFormat(
          "cross-node share of token traffic (%d experts in %d groups per token): %s %.3f, "
          "planned %.3f (each ±%.3f)\n",
          model.experts_per_token, std::min(model.groups_per_token, s.num_groups), baseline_name,
          before_share.share, after_share.share,
          std::max(before_share.error_bound, after_share.error_bound));
    }
  }
  if (baseline_is_previous) {
    const Migration m = ComputeMigration(baseline, map, o.bytes_per_expert);
    err << absl::StrFormat(
        "vs previous: %d of %d slots changed, %d experts to receive (at most %d on one rank)",
        m.slots_changed, int64_t{s.num_layers} * s.num_physical_experts, m.experts_received,
        m.max_experts_received_by_a_rank);
    if (o.bytes_per_expert > 0) err << absl::StrFormat(", %d bytes", m.bytes_moved);
    err << "\n";
  }
}

// Returns the exit code; writes the one-line error itself.
int Plan(const PlanOptions& options, std::ostream& out, std::ostream& err) {
  auto fail = [&err](const absl::Status& status) {
    err << "eplbctl plan: " << status.message() << "\n";
    return 1;
  };
  PlanOptions o = options;
  std::optional<LoadMatrix> load;
  if (o.load_path) {
    auto read = ReadEngineLoad(*o.load_path, o.load_format,
                               {.layer_ids = o.layer_ids, .iterations = o.iterations});
    if (!read.ok()) return fail(read.status());
    load = std::move(read->load);
    if (o.load_format != LoadFormat::kEplb) {
      err << absl::StrFormat("load: %s, %d layers × %d experts, %d %s", *o.load_path,
                             load->num_layers, load->num_experts, read->steps,
                             o.load_format == LoadFormat::kSglang ? "steps" : "iterations");
      if (o.load_format == LoadFormat::kTrtllmStats) {
        err << absl::StrFormat(" from %d rank files", read->files);
      }
      if (read->layer_ids) err << " (" << read->layer_ids->DebugString() << ")";
      err << "\n";
    }
    if (!o.layer_ids) o.layer_ids = read->layer_ids;
    if (o.shape.num_layers != 0 && o.shape.num_layers != load->num_layers) {
      return fail(absl::InvalidArgumentError(absl::StrCat("--num-layers = ", o.shape.num_layers,
                                                          ", but ", *o.load_path, " has ",
                                                          load->num_layers, " layers")));
    }
    if (o.shape.num_logical_experts != 0 && o.shape.num_logical_experts != load->num_experts) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("--num-logical-experts = ", o.shape.num_logical_experts, ", but ",
                       *o.load_path, " has ", load->num_experts, " experts per layer")));
    }
    o.shape.num_layers = load->num_layers;
    o.shape.num_logical_experts = load->num_experts;
  }
  if (absl::Status st = ValidateShape(o.shape); !st.ok()) return fail(st);
  if (o.layer_ids) {
    if (absl::Status st = o.layer_ids->CheckFits(o.shape.num_layers, "the plan"); !st.ok()) {
      return fail(st);
    }
  }

  std::optional<ParsedExpertMap> previous;
  if (o.previous_path) {
    auto read = ReadPrevious(*o.previous_path, o.shape, o.layer_ids);
    if (!read.ok()) return fail(read.status());
    previous = *std::move(read);
  }

  auto policy = CreatePolicy(o.policy, o.balanced ? &o.balanced->options : nullptr);
  if (!policy.ok()) return fail(policy.status());
  const auto start = std::chrono::steady_clock::now();
  auto map = (*policy)->Plan({.shape = o.shape,
                              .load = load ? &*load : nullptr,
                              .previous = previous ? &previous->map : nullptr});
  const double plan_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (!map.ok()) return fail(map.status());

  std::vector<double> shares;
  if (o.replica_shares) shares = OptimalReplicaShareTable(*map, *load);
  const int64_t version = previous ? previous->version + 1 : 1;
  if (o.output_path) {
    const LayerIds* layer_ids = o.layer_ids ? &*o.layer_ids : nullptr;
    if (absl::Status written =
            WriteExpertMapFile(*o.output_path, *map, o.format, version, layer_ids, shares);
        !written.ok()) {
      return fail(written);
    }
  } else {
    WriteExpertMapText(
        *map, o.format, version,
        [&out](absl::string_view piece) {
          out.write(piece.data(), static_cast<std::streamsize>(piece.size()));
        },
        o.layer_ids ? &*o.layer_ids : nullptr, shares);
    out.flush();
  }

  std::optional<ExpertMap> contiguous;
  if (!previous) {
    auto planned = ContiguousPolicy().Plan({.shape = o.shape});
    if (!planned.ok()) return fail(planned.status());
    contiguous = *std::move(planned);
  }
  PrintSummary(o, *map, load ? &*load : nullptr, shares, previous ? previous->map : *contiguous,
               previous.has_value(), plan_ms, err);
  if (o.output_path) {
    err << absl::StrFormat("wrote %s (%s, version %d)\n", *o.output_path, MapFormatName(o.format),
                           version);
  }
  return 0;
}

}  // namespace

std::string PlanUsage() {
  return absl::StrCat(
      "usage: eplbctl plan --load LOAD --num-physical-experts P --num-ranks R\n"
      "                    [--load-format eplb|sglang|trtllm-stats] [--iterations A-B]\n"
      "                    [--num-groups G] [--num-nodes N]\n"
      "                    [--policy contiguous|deepseek|balanced] [--previous MAP.json]\n"
      "                    [--tolerance X] [--max-received-per-rank M]\n"
      "                    [--max-received-per-layer M] [--layer-min-gain X] [--node-affinity]\n"
      "                    [--output MAP.json] [--format eplb|vllm-ascend|sglang|trtllm] "
      "[--per-layer]\n"
      "                    [--replica-shares]\n"
      "                    [--layer-ids LIST | --first-moe-layer K] [--num-hidden-layers H]\n"
      "       eplbctl plan --policy contiguous --num-layers L --num-logical-experts E\n"
      "                    --num-physical-experts P --num-ranks R --output MAP.json\n\n"
      "Plans an expert map offline. The map goes to --output (or standard output), a summary to\n"
      "standard error.\n\nflags:\n",
      FlagHelp(kPlanFlags));
}

int RunPlanCommand(std::span<const std::string> args, std::ostream& out, std::ostream& err) {
  auto parsed = ParseArgs(args, kPlanFlags);
  if (!parsed.ok()) {
    err << "eplbctl plan: " << parsed.status().message() << " (see eplbctl plan --help)\n";
    return 2;
  }
  if (parsed->Has("help")) {
    out << PlanUsage();
    return 0;
  }
  auto options = ReadOptions(*parsed);
  if (!options.ok()) {
    err << "eplbctl plan: " << options.status().message() << " (see eplbctl plan --help)\n";
    return 2;
  }
  return Plan(*options, out, err);
}

}  // namespace eplb::cli
