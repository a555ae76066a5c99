#include "core/load_formats.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/file_io.h"
#include "core/json.h"
#include "core/map_files.h"
#include "core/map_format.h"
#include "core/safetensors.h"
#include "core/shape.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

absl::Status WithPath(const std::string& path, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}

// ---- sglang ------------------------------------------------------------------------------------

// Adds the [H][E] array `rows` to `sums` (sized on the first call). `name` names `rows`.
absl::Status AddRows(const JsonValue& rows, const std::string& name, std::vector<double>* sums,
                     int64_t* num_rows, int64_t* num_experts) {
  if (!rows.is_array()) return Invalid(absl::StrCat(name, " is not a list of rows"));
  // Packed: its items are integers, not rows.
  if (rows.is_int_array()) return Invalid(absl::StrCat(name, "[0] is not a list of numbers"));
  const auto& items = rows.array_items();
  if (*num_rows < 0) {
    if (items.empty()) return Invalid(absl::StrCat(name, " has no rows"));
    if (items.size() > static_cast<size_t>(LayerIds::kMaxHiddenLayers)) {
      return Invalid(absl::StrCat(name, " has ", items.size(), " rows, more than ",
                                  LayerIds::kMaxHiddenLayers, " layers"));
    }
    *num_rows = static_cast<int64_t>(items.size());
  } else if (static_cast<int64_t>(items.size()) != *num_rows) {
    return Invalid(absl::StrCat(name, " has ", items.size(), " rows, expected ", *num_rows));
  }
  for (size_t h = 0; h < items.size(); ++h) {
    const JsonValue& row = items[h];
    const auto row_name = [&] { return absl::StrCat(name, "[", h, "]"); };
    if (!row.is_array()) return Invalid(absl::StrCat(row_name(), " is not a list of numbers"));
    const size_t size = row.array_size();
    if (*num_experts < 0) {
      if (size == 0) return Invalid(absl::StrCat(row_name(), " is empty"));
      if (size > static_cast<size_t>(ShapeLimits::kMaxLogicalExperts)) {
        return Invalid(absl::StrCat(row_name(), " has ", size, " values, more than ",
                                    ShapeLimits::kMaxLogicalExperts, " experts"));
      }
      *num_experts = static_cast<int64_t>(size);
      sums->assign(static_cast<size_t>(*num_rows * *num_experts), 0.0);
    } else if (static_cast<int64_t>(size) != *num_experts) {
      return Invalid(absl::StrCat(row_name(), " has ", size, " values, expected ", *num_experts));
    }
    double* sum = sums->data() + h * *num_experts;
    if (row.is_int_array()) {
      const std::span<const int64_t> values = row.int_array_items();
      for (size_t e = 0; e < size; ++e) sum[e] += static_cast<double>(values[e]);
      continue;
    }
    const auto& values = row.array_items();
    for (size_t e = 0; e < size; ++e) {
      if (!values[e].is_number()) {
        return Invalid(absl::StrCat(row_name(), "[", e, "] is not a number"));
      }
      sum[e] += values[e].number_value();
    }
  }
  return absl::OkStatus();
}

// ---- trtllm-stats ------------------------------------------------------------------------------

// "rank12.safetensors" → 12; -1 for any other name (rank3_raw.safetensors included).
int64_t RankOfFile(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "rank") || !absl::ConsumeSuffix(&name, ".safetensors")) {
    return -1;
  }
  int64_t rank = 0;
  if (name.empty() || name.size() > 9 ||
      !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(name, &rank)) {
    return -1;
  }
  return rank;
}

// "100_3" → (100, 3).
absl::StatusOr<std::pair<int64_t, int64_t>> IterationAndLayer(absl::string_view name) {
  const std::vector<absl::string_view> parts = absl::StrSplit(name, '_');
  int64_t iteration = 0, layer = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &iteration) ||
      !absl::SimpleAtoi(parts[1], &layer) || iteration < 0 || layer < 0 ||
      layer >= LayerIds::kMaxHiddenLayers) {
    return Invalid(absl::StrCat("tensor \"", name,
                                "\" is not named ITERATION_LAYER (TensorRT-LLM's statistics)"));
  }
  return std::make_pair(iteration, layer);
}

absl::StatusOr<EngineLoad> ReadTrtllmStats(const std::string& dir, const LoadReadOptions& options) {
  namespace fs = std::filesystem;
  const std::string meta_path = (fs::path(dir) / "meta_info.json").string();
  ASSIGN_OR_RETURN(const std::string meta_text, ReadFileToString(meta_path, 1 << 20));
  absl::StatusOr<JsonValue> meta = ParseJson(meta_text);
  if (!meta.ok()) return WithPath(meta_path, meta.status());
  const JsonValue* experts = meta->is_object() ? meta->Find("num_experts") : nullptr;
  if (experts == nullptr || !experts->is_integer() || experts->int_value() < 1 ||
      experts->int_value() > ShapeLimits::kMaxLogicalExperts) {
    return Invalid(absl::StrCat(meta_path, ": expected {\"num_experts\": E, …} with E in [1, ",
                                ShapeLimits::kMaxLogicalExperts,
                                "] (rank 0 writes null when it recorded nothing)"));
  }
  const int64_t num_experts = experts->int_value();

  std::vector<std::pair<int64_t, fs::path>> files;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const int64_t rank = RankOfFile(it->path().filename().string());
    if (rank >= 0) files.emplace_back(rank, it->path());
    if (files.size() > static_cast<size_t>(ShapeLimits::kMaxRanks)) {
      return Invalid(absl::StrCat(dir, " holds more than ", ShapeLimits::kMaxRanks, " rank files"));
    }
  }
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat("cannot list ", dir, ": ", error.message()));
  }
  if (files.empty()) return Invalid(absl::StrCat(dir, " holds no rank{r}.safetensors file"));
  std::sort(files.begin(), files.end());

  std::map<int64_t, std::vector<double>> sums;         // layer → [E]
  std::map<int64_t, std::set<int64_t>> iterations_of;  // layer → iterations summed
  for (const auto& [rank, path] : files) {
    ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path.string(), kMaxMapFileBytes));
    absl::StatusOr<std::vector<SafetensorsTensor>> tensors = ParseSafetensors(bytes);
    if (!tensors.ok()) return WithPath(path.string(), tensors.status());
    for (const SafetensorsTensor& tensor : *tensors) {
      absl::StatusOr<std::pair<int64_t, int64_t>> key = IterationAndLayer(tensor.name);
      if (!key.ok()) return WithPath(path.string(), key.status());
      const auto [iteration, layer] = *key;
      if (options.iterations &&
          (iteration < options.iterations->first || iteration >= options.iterations->second)) {
        continue;
      }
      if (tensor.shape != std::vector<int64_t>{num_experts}) {
        return Invalid(absl::StrCat(path.string(), ": tensor \"", tensor.name,
                                    "\" is not of shape [", num_experts, "] (num_experts in ",
                                    meta_path, ")"));
      }
      absl::StatusOr<std::vector<int64_t>> counts = SafetensorsIntegers(tensor);
      if (!counts.ok()) return WithPath(path.string(), counts.status());
      auto [sum, inserted] = sums.try_emplace(layer);
      if (inserted) {
        if (sums.size() > static_cast<size_t>(ShapeLimits::kMaxLayers)) {
          return Invalid(absl::StrCat(dir, " holds statistics of more than ",
                                      ShapeLimits::kMaxLayers, " layers"));
        }
        sum->second.assign(static_cast<size_t>(num_experts), 0.0);
      }
      for (int64_t e = 0; e < num_experts; ++e) {
        if ((*counts)[e] < 0) {
          return Invalid(absl::StrCat(path.string(), ": tensor \"", tensor.name, "\"[", e,
                                      "] = ", (*counts)[e], " is negative"));
        }
        sum->second[e] += static_cast<double>((*counts)[e]);
      }
      iterations_of[layer].insert(iteration);
    }
  }
  if (sums.empty()) {
    return Invalid(options.iterations ? absl::StrCat(dir, " holds no statistics of iterations ",
                                                     options.iterations->first, " to ",
                                                     options.iterations->second - 1)
                                      : absl::StrCat(dir, " holds no statistics"));
  }

  EngineLoad result;
  result.files = static_cast<int32_t>(files.size());
  std::vector<int64_t> layers;
  if (options.layer_ids) {
    for (int32_t layer : options.layer_ids->moe_layers()) {
      if (!sums.contains(layer)) {
        return Invalid(absl::StrCat(dir, " holds no statistics of layer ", layer,
                                    ", which the layer ids name (",
                                    options.layer_ids->DebugString(), ")"));
      }
      layers.push_back(layer);
    }
    result.layer_ids = options.layer_ids;
  } else {
    for (const auto& [layer, unused] : sums) layers.push_back(layer);
    ASSIGN_OR_RETURN(result.layer_ids, LayerIds::FromIds(layers));
  }
  // Every layer summed over the same iterations: a partial dump would weigh layers unequally.
  const std::set<int64_t>& first = iterations_of[layers.front()];
  for (int64_t layer : layers) {
    const std::set<int64_t>& these = iterations_of[layer];
    if (these != first) {
      return Invalid(absl::StrCat(dir, ": layer ", layer, " has statistics of ", these.size(),
                                  " iterations (", *these.begin(), " to ", *these.rbegin(),
                                  "), layer ", layers.front(), " of ", first.size(), " (",
                                  *first.begin(), " to ", *first.rbegin(), ")"));
    }
  }
  result.steps = static_cast<int64_t>(first.size());
  result.load.num_layers = static_cast<int32_t>(layers.size());
  result.load.num_experts = static_cast<int32_t>(num_experts);
  for (int64_t layer : layers) {
    const std::vector<double>& row = sums[layer];
    result.load.values.insert(result.load.values.end(), row.begin(), row.end());
  }
  RETURN_IF_ERROR(ValidateLoad(result.load, result.load.num_layers, result.load.num_experts));
  return result;
}

}  // namespace

absl::StatusOr<LoadFormat> ParseLoadFormat(absl::string_view name) {
  for (LoadFormat format : {LoadFormat::kEplb, LoadFormat::kSglang, LoadFormat::kTrtllmStats}) {
    if (name == LoadFormatName(format)) return format;
  }
  return Invalid(
      absl::StrCat("unknown load format \"", name, "\": expected eplb, sglang or trtllm-stats"));
}

absl::string_view LoadFormatName(LoadFormat format) {
  switch (format) {
    case LoadFormat::kEplb:
      return "eplb";
    case LoadFormat::kSglang:
      return "sglang";
    case LoadFormat::kTrtllmStats:
      return "trtllm-stats";
  }
  return "unknown";
}

absl::StatusOr<EngineLoad> ParseSglangLoad(absl::string_view json,
                                           const std::optional<LayerIds>& layer_ids) {
  ASSIGN_OR_RETURN(const JsonValue root, ParseJson(json));
  const JsonValue* counts = root.is_object() ? root.Find("logical_count") : nullptr;
  if (counts == nullptr) {
    return Invalid(
        "expected {\"logical_count\": [[…E…] × H]} or [steps][H][E] (SGLang's expert "
        "distribution)");
  }
  if (!counts->is_array() || counts->array_size() == 0) {
    return Invalid("logical_count is not a non-empty list");
  }
  // [H][E] or [steps][H][E]: told apart by the depth of the first element (packed arrays hold
  // integers only).
  const auto holds_arrays = [](const JsonValue& v) {
    return v.is_array() && !v.is_int_array() && !v.array_items().empty() &&
           v.array_items()[0].is_array();
  };
  const bool has_steps = holds_arrays(*counts) && holds_arrays(counts->array_items()[0]);
  std::vector<double> sums;
  int64_t num_rows = -1, num_experts = -1;
  EngineLoad result;
  if (has_steps) {
    const auto& steps = counts->array_items();
    for (size_t s = 0; s < steps.size(); ++s) {
      RETURN_IF_ERROR(AddRows(steps[s], absl::StrCat("logical_count[", s, "]"), &sums, &num_rows,
                              &num_experts));
    }
    result.steps = static_cast<int64_t>(steps.size());
  } else {
    RETURN_IF_ERROR(AddRows(*counts, "logical_count", &sums, &num_rows, &num_experts));
    result.steps = 1;
  }
  LoadMatrix hidden_rows{.num_layers = static_cast<int32_t>(num_rows),
                         .num_experts = static_cast<int32_t>(num_experts),
                         .values = std::move(sums)};
  ASSIGN_OR_RETURN(result.load,
                   SelectMoeLayers(std::move(hidden_rows), layer_ids, "logical_count"));
  result.layer_ids = layer_ids;
  return result;
}

absl::StatusOr<LoadMatrix> SelectMoeLayers(LoadMatrix hidden_rows,
                                           const std::optional<LayerIds>& layer_ids,
                                           absl::string_view what) {
  const int64_t num_rows = hidden_rows.num_layers, num_experts = hidden_rows.num_experts;
  LoadMatrix load{.num_experts = hidden_rows.num_experts};
  if (!layer_ids) {
    if (num_rows > ShapeLimits::kMaxLayers) {
      return Invalid(absl::StrCat(what, " has ", num_rows, " rows, more than ",
                                  ShapeLimits::kMaxLayers, " MoE layers: give the layer ids"));
    }
    load = std::move(hidden_rows);
  } else {
    if (num_rows != layer_ids->num_hidden_layers()) {
      return Invalid(absl::StrCat(what, " has ", num_rows, " rows, but the layer ids name ",
                                  layer_ids->num_hidden_layers(), " hidden layers (",
                                  layer_ids->DebugString(), ")"));
    }
    load.num_layers = layer_ids->num_moe_layers();
    for (int32_t hidden : layer_ids->moe_layers()) {
      const auto row = hidden_rows.values.begin() + static_cast<ptrdiff_t>(hidden) * num_experts;
      load.values.insert(load.values.end(), row, row + num_experts);
    }
  }
  RETURN_IF_ERROR(ValidateLoad(load, load.num_layers, load.num_experts));
  return load;
}

absl::StatusOr<EngineLoad> ReadEngineLoad(const std::string& path, LoadFormat format,
                                          const LoadReadOptions& options) {
  if (options.iterations && format != LoadFormat::kTrtllmStats) {
    return Invalid("iterations apply to trtllm-stats only");
  }
  if (options.iterations &&
      (options.iterations->first < 0 || options.iterations->second <= options.iterations->first)) {
    return Invalid(absl::StrCat("iterations ", options.iterations->first, " to ",
                                options.iterations->second, " (the end excluded) hold none"));
  }
  switch (format) {
    case LoadFormat::kEplb: {
      // Its rows are the MoE layers: layer ids only travel with it.
      ASSIGN_OR_RETURN(LoadMatrix load, ReadLoadFile(path));
      return EngineLoad{.load = std::move(load), .layer_ids = options.layer_ids};
    }
    case LoadFormat::kSglang: {
      ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path, kMaxMapFileBytes));
      absl::StatusOr<EngineLoad> load = ParseSglangLoad(text, options.layer_ids);
      if (!load.ok()) return WithPath(path, load.status());
      return load;
    }
    case LoadFormat::kTrtllmStats:
      return ReadTrtllmStats(path, options);
  }
  return Invalid("unknown load format");
}

}  // namespace eplb
