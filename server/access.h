// Access control of the planner's API: who a caller is (a bearer token or a verified client
// certificate) and what that credential may do.
//
// Scopes:
//   admin       every call: create, delete and rebalance deployments, and everything below.
//   read        every read of every deployment (deployments, plans, load, rendezvous values) and
//               observer watches (rank −1); no reports, acks or writes.
//   deployment  one deployment (`deployment`), optionally some of its ranks (`ranks`): reads of
//               that deployment, load reports and plan acks for its ranks, and — with every rank or
//               rank 0, the rank that bootstraps the agents' communicator — rendezvous writes.
//               ListDeployments shows it that deployment only.
//
// With no credentials configured (no token, no credentials file, no client CA) every caller is
// admin; the planner refuses to serve beyond loopback that way unless told to (--insecure).
//
// A call that carries an authorization header is identified by its token alone; one without is
// identified by its client certificate (common name or a subject alternative name) when mutual
// TLS is on. When the client CA is the only credential configured (no token, no credentials
// file), every certificate it verified is admin; otherwise a certificate no credential names is
// refused. Tokens are looked up by
// their SHA-256 digest, so neither a token's length nor a matching prefix shows in the time a
// refusal takes.
#ifndef EPLB_SERVER_ACCESS_H_
#define EPLB_SERVER_ACCESS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace eplb::server {

// Tokens: at least kMinTokenBytes (so that guessing is hopeless at any call rate), at most
// kMaxTokenBytes, printable ASCII without spaces.
inline constexpr size_t kMinTokenBytes = 16;
inline constexpr size_t kMaxTokenBytes = 4089;
// A credentials file: at most this many entries and bytes.
inline constexpr int kMaxCredentials = 100000;
inline constexpr size_t kMaxCredentialsFileBytes = 16 << 20;

enum class Scope { kAdmin, kRead, kDeployment };

struct Credential {
  std::string name;  // shown in logs and errors; never the secret
  Scope scope = Scope::kAdmin;
  std::string deployment;      // kDeployment only
  std::vector<int32_t> ranks;  // kDeployment only; empty: every rank
  // How it is presented: exactly one of these.
  std::string token;
  std::string token_sha256;  // 64 hex digits: the digest of the token, instead of the token
  std::string identity;      // a client certificate's common name or subject alternative name
};

// Parses a credentials file (YAML):
//
//   credentials:
//     - name: operator
//       scope: admin
//       token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//     - name: dashboards
//       scope: read
//       token: ...
//     - name: deepseek-v3-workers
//       scope: deployment
//       deployment: deepseek-v3
//       token: ...
//     - name: deepseek-v3-rank-0
//       scope: deployment
//       deployment: deepseek-v3
//       ranks: [0]
//       identity: worker-0.deepseek-v3   # mutual TLS: the client certificate's CN or a SAN
//
// Unknown keys are refused (a misspelt `ranks` must not widen a scope). Errors name the entry
// (its index and name) and the field.
absl::StatusOr<std::vector<Credential>> ParseCredentials(absl::string_view yaml,
                                                         absl::string_view source);

// What a call wants to do, checked against the caller's credential.
class AccessControl {
 public:
  // Everyone is admin.
  AccessControl();
  // `shared_token` (may be empty) is an admin credential named "bearer-token". `mutual_tls`: the
  // server verifies client certificates (identities need it). Refuses duplicate names, tokens or
  // identities, and malformed entries, naming them.
  static absl::StatusOr<AccessControl> Create(absl::string_view shared_token,
                                              std::vector<Credential> credentials,
                                              bool mutual_tls);

  // True when calls must present a credential.
  bool enforcing() const { return enforcing_; }

  // The caller's credential, from the authorization metadata value (nullopt when absent) and the
  // identities of its verified client certificate (empty without mutual TLS). UNAUTHENTICATED
  // (UNAUTHENTICATED_TOKEN) when nothing matches.
  absl::StatusOr<const Credential*> Identify(std::optional<absl::string_view> authorization,
                                             const std::vector<std::string>& identities) const;

  // PERMISSION_DENIED (OUT_OF_SCOPE) naming the credential, the call and the scope, or OK.
  // `what` names the call, e.g. "CreateDeployment".
  static absl::Status CheckAdmin(const Credential& caller, absl::string_view what);
  static absl::Status CheckRead(const Credential& caller, absl::string_view what,
                                absl::string_view deployment);
  // Reports and acks for `rank` of `deployment`.
  static absl::Status CheckRank(const Credential& caller, absl::string_view what,
                                absl::string_view deployment, int32_t rank);
  // Rendezvous writes: every rank of the deployment, or rank 0.
  static absl::Status CheckPublish(const Credential& caller, absl::string_view what,
                                   absl::string_view deployment);
  // Whether ListDeployments shows `deployment` to the caller.
  static bool Sees(const Credential& caller, absl::string_view deployment);

 private:
  using Digest = std::array<unsigned char, 32>;
  struct DigestHash {
    size_t operator()(const Digest& d) const;
  };

  bool enforcing_ = false;
  bool certificates_are_admin_ = false;  // mutual TLS without a credentials file
  std::vector<Credential> credentials_;
  absl::flat_hash_map<Digest, int, DigestHash> by_token_;
  absl::flat_hash_map<std::string, int> by_identity_;
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_ACCESS_H_
