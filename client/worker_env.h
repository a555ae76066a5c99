// The environment a serving worker's eplb integration reads, so that a worker image is configured
// by its pod spec alone (deploy/kubernetes/worker-statefulset.yaml sets these):
//
//   EPLB_PLANNER          planner address HOST:PORT                        (required)
//   EPLB_DEPLOYMENT       the deployment this rank belongs to              (required)
//   EPLB_RANK             this rank in the expert-parallel group, 0 … 65535 (required)
//   EPLB_LOCAL_DEVICE     CUDA device of this rank, 0 … 1023; default: rank mod devices
//   EPLB_TOKEN            bearer token for the planner (whitespace trimmed) (default: none)
//   EPLB_TLS_CA           PEM file of the planner's CA; set: TLS           (default: plaintext)
//   EPLB_SYNC_EVERY_STEPS steps between the agents' syncs, 1 … 1,000,000 (default 16)
//   EPLB_REPORT_EVERY_STEPS steps per load report, 1 … 1,000,000       (default 100)
#ifndef EPLB_CLIENT_WORKER_ENV_H_
#define EPLB_CLIENT_WORKER_ENV_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace eplb::client {

struct WorkerEnv {
  std::string planner;
  std::string deployment;
  int32_t rank = 0;
  int32_t local_device = -1;  // -1: not set
  std::string token;
  std::string tls_ca_file;
  int64_t sync_every_steps = 16;
  int64_t report_every_steps = 100;
};

// Reads the variables through `lookup` (std::getenv by default; nullptr means unset).
// INVALID_ARGUMENT naming the variable: a required one missing or empty, a number that is not an
// integer or out of its range.
absl::StatusOr<WorkerEnv> WorkerEnvFromEnvironment(
    const std::function<const char*(const char*)>& lookup = nullptr);

}  // namespace eplb::client

#endif  // EPLB_CLIENT_WORKER_ENV_H_
