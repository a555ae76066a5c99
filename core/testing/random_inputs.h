// Random placements and loads for tests, benchmarks and the GPU test (header-only; core only).
#ifndef EPLB_CORE_TESTING_RANDOM_INPUTS_H_
#define EPLB_CORE_TESTING_RANDOM_INPUTS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/shape.h"

namespace eplb::testing {

// A map with every expert once per layer and the P − E other slots holding random experts, slots
// shuffled per layer (so replicas of one expert may share a rank). REQUIRES: E ≤ P, R ≤ P.
template <typename Rng>
std::shared_ptr<const ExpertMap> RandomExpertMap(int32_t L, int32_t E, int32_t P, int32_t R,
                                                 Rng& rng) {
  std::vector<int32_t> phy2log;
  for (int32_t l = 0; l < L; ++l) {
    std::vector<int32_t> row(P);
    for (int32_t p = 0; p < P; ++p) row[p] = p < E ? p : static_cast<int32_t>(rng() % E);
    std::shuffle(row.begin(), row.end(), rng);
    phy2log.insert(phy2log.end(), row.begin(), row.end());
  }
  auto map = ExpertMap::FromPhy2Log(L, E, SlotLayout(P, R), std::move(phy2log));
  EPLB_CHECK(map.ok(), map.status().message());
  return std::make_shared<const ExpertMap>(*std::move(map));
}

// Integer token counts, log-normal per expert with the given σ, as a router's histogram looks.
template <typename Rng>
LoadMatrix LogNormalLoad(const DeploymentShape& shape, double sigma, Rng& rng) {
  std::lognormal_distribution<double> share(0.0, sigma);
  LoadMatrix load{.num_layers = shape.num_layers, .num_experts = shape.num_logical_experts};
  load.values.resize(static_cast<size_t>(shape.num_layers) * shape.num_logical_experts);
  for (double& v : load.values) v = std::round(share(rng) * 1000.0);
  return load;
}

}  // namespace eplb::testing

#endif  // EPLB_CORE_TESTING_RANDOM_INPUTS_H_
