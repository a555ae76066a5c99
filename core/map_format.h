// File formats: the load file, eplb's own expert map (`eplb.expert_map.v1`), and the
// map formats serving engines already read, so that a plan can be fed to them unchanged:
//
//   eplb         {"format": "eplb.expert_map.v1", "version": V, "num_layers": L, …, "phy2log": …,
//                 "log2phy": …, "logcnt": …, optionally "replica_share": [[…P…] × L]}
//   vllm-ascend  {"moe_layer_count": L, "layer_list": [{"layer_id": l, "device_count": R,
//                 "device_list": [{"device_id": r, "device_expert": [experts in rank r's
//                 slots]}]}]}
//   sglang       {"physical_to_logical_map": [[…P…] × H]}: a row per hidden layer (H of them), the
//                rows of dense layers trivial (slot p holds expert p mod E); the file SGLang's
//                --init-expert-location reads, with no other key
//   trtllm       TensorRT-LLM's load balancer YAML (core/trtllm_map.h): initial_global_assignments
//                keyed by the MoE layers' hidden-layer indices, num_slots, layer_updates_per_iter
//
// eplb's and vllm-ascend's rows are MoE layers; SGLang's are hidden layers and TensorRT-LLM's keys
// hidden-layer indices, mapped to MoE layers by a LayerIds (core/layer_ids.h; without one, every
// hidden layer is a MoE layer).
//
// Readers check everything (JSON syntax, keys, types, shapes, ranges, consistency of the tables)
// and return INVALID_ARGUMENT naming the first offending field, e.g. "phy2log[2][7] = 300 is out of
// range [0, 255]" or "line 3, column 14: expected ',' or ']'".
#ifndef EPLB_CORE_MAP_FORMAT_H_
#define EPLB_CORE_MAP_FORMAT_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/expert_map.h"
#include "core/layer_ids.h"
#include "core/load.h"

namespace eplb {

enum class MapFormat { kEplb, kVllmAscend, kSglang, kTrtllm };

// "eplb", "vllm-ascend", "sglang", "trtllm". INVALID_ARGUMENT listing these for any other name.
absl::StatusOr<MapFormat> ParseMapFormat(absl::string_view name);
absl::string_view MapFormatName(MapFormat format);

// {"load": [[l0e0, l0e1, …], …]}: L ≥ 1 rows of E ≥ 1 finite, non-negative numbers, every row of
// the same length.
absl::StatusOr<LoadMatrix> ParseLoadJson(absl::string_view json);
std::string LoadToJson(const LoadMatrix& load);

// Replica routing shares (the eplb format's optional "replica_share"): for every layer and slot,
// the share of its expert's tokens that slot's replica should receive (core/metrics.h
// OptimalReplicaShares), for engines that split an expert's tokens unevenly over its replicas. A
// map without them routes uniformly (1 / replicas each), and readers that do not know the key
// ignore it; the other formats cannot carry it.
//
// OK when `share` (L × P, row-major) is such a table for `map`: every entry a number in [0, 1]
// and each expert's shares summing to 1 within kReplicaShareSumTolerance. INVALID_ARGUMENT naming
// the first offending entry otherwise, e.g. "replica_share[1][4] = 1.5 is out of range [0, 1]" or
// "replica_share[0]: the shares of expert 2 (slots 2, 5) sum to 0.9, expected 1".
inline constexpr double kReplicaShareSumTolerance = 1e-6;
absl::Status CheckReplicaShares(const ExpertMap& map, std::span<const double> share);

// OK when `map` can be written in `format` with `layer_ids` (nullptr: every hidden layer is a MoE
// layer) and `replica_share` (empty: none); INVALID_ARGUMENT otherwise: layer ids that do not fit
// the map (naming both counts), for trtllm a slot count that is not a multiple of the ranks, shares
// for a format other than eplb, or shares that CheckReplicaShares refuses.
absl::Status CheckMapWritable(const ExpertMap& map, MapFormat format,
                              const LayerIds* layer_ids = nullptr,
                              std::span<const double> replica_share = {});

// Serialises `map` in `format` (JSON; YAML for trtllm). `version` (≥ 0) is written by the eplb
// format only; `layer_ids` numbers the rows of the sglang and trtllm formats; `replica_share`, when
// not empty, is written as the eplb format's replica_share, each number as the shortest text that
// reads back to it exactly.
// REQUIRES: CheckMapWritable(map, format, layer_ids, replica_share).ok().
std::string ExpertMapToText(const ExpertMap& map, MapFormat format, int64_t version = 0,
                            const LayerIds* layer_ids = nullptr,
                            std::span<const double> replica_share = {});

// The same text, handed to `sink` in pieces of about 64 KiB as it is produced, so that a large map
// (the eplb format of a DeepSeek-V3 plan is about 2 MB) is written without holding it whole.
void WriteExpertMapText(const ExpertMap& map, MapFormat format, int64_t version,
                        absl::FunctionRef<void(absl::string_view)> sink,
                        const LayerIds* layer_ids = nullptr,
                        std::span<const double> replica_share = {});

// What a reader needs to know that a format does not carry. 0 means "not known": the value is then
// taken from the file, or derived (experts: the largest expert index + 1).
struct MapShapeHints {
  int32_t num_logical_experts = 0;  // sglang and trtllm files carry no E
  int32_t num_ranks = 0;            // sglang and trtllm files carry no R: required for them
  // How the file numbers its rows (sglang: one per hidden layer; the map keeps the MoE layers'
  // rows). Unset: every row is a MoE layer. A file whose rows do not fit is INVALID_ARGUMENT
  // naming both counts.
  std::optional<LayerIds> layer_ids;
};

struct ParsedExpertMap {
  ExpertMap map;
  MapFormat format;
  int64_t version = 0;  // eplb format only; 0 otherwise
  // The eplb format's replica_share (L × P, checked by CheckReplicaShares); empty when the file
  // carries none.
  std::vector<double> replica_share;
};

// Reads a map in any of the JSON formats, recognised by its keys. A hint that disagrees with a
// value the file carries is INVALID_ARGUMENT naming both.
absl::StatusOr<ParsedExpertMap> ParseExpertMapJson(absl::string_view json,
                                                   const MapShapeHints& hints = {});

// Reads a map in any format: JSON (a text starting with '{') as ParseExpertMapJson, YAML as
// TensorRT-LLM's (trtllm).
absl::StatusOr<ParsedExpertMap> ParseExpertMap(absl::string_view text,
                                               const MapShapeHints& hints = {});

}  // namespace eplb

#endif  // EPLB_CORE_MAP_FORMAT_H_
