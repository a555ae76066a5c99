#include "server/access.h"

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/convert.h"
#include "server/api_errors.h"

namespace eplb::server {
namespace {

constexpr absl::string_view kBearer = "Bearer ";
// Ranks named in all `ranks` lists of a file (aliases could repeat one list many times).
constexpr size_t kMaxRanksListed = size_t{1} << 22;

const Credential& Anonymous() {
  static const Credential* const anonymous = new Credential{.name = "anonymous"};
  return *anonymous;
}

const Credential& CertificateAdmin() {
  static const Credential* const admin = new Credential{.name = "client-certificate"};
  return *admin;
}

std::array<unsigned char, 32> Sha256(absl::string_view data) {
  std::array<unsigned char, 32> digest{};
  unsigned int size = 0;
  // EVP_Digest with SHA-256 does not fail on valid arguments.
  EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(), nullptr);
  return digest;
}

std::string ScopeName(const Credential& c) {
  switch (c.scope) {
    case Scope::kAdmin:
      return "admin";
    case Scope::kRead:
      return "read";
    case Scope::kDeployment:
      return c.ranks.empty()
                 ? absl::StrCat("deployment ", Echo(c.deployment))
                 : absl::StrCat("deployment ", Echo(c.deployment), " ranks [",
                                absl::StrJoin(c.ranks.begin(),
                                              c.ranks.begin() + std::min<size_t>(c.ranks.size(), 8),
                                              ","),
                                c.ranks.size() > 8 ? ",…" : "", "]");
  }
  return "";
}

absl::Status Denied(const Credential& caller, absl::string_view what, absl::string_view field,
                    absl::string_view why) {
  return ErrorWithDetail(absl::StatusCode::kPermissionDenied, v1::OUT_OF_SCOPE, field,
                         absl::StrCat("credential ", Echo(caller.name), " (scope ",
                                      ScopeName(caller), ") may not ", what, ": ", why));
}

bool PrintableToken(absl::string_view token) {
  return std::all_of(token.begin(), token.end(), [](char c) { return c > ' ' && c < 127; });
}

// "credentials[3] (\"name\")" for messages.
std::string Entry(int index, absl::string_view name) {
  return name.empty() ? absl::StrCat("credentials[", index, "]")
                      : absl::StrCat("credentials[", index, "] (", Echo(name), ")");
}

std::string At(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return absl::StrCat("line ", mark.line + 1, ": ");
}

}  // namespace

size_t AccessControl::DigestHash::operator()(const Digest& d) const {
  size_t h = 0;
  std::memcpy(&h, d.data(), sizeof(h));
  return h;
}

absl::StatusOr<std::vector<Credential>> ParseCredentials(absl::string_view yaml,
                                                         absl::string_view source) {
  const auto invalid = [&](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
  };
  if (yaml.size() > kMaxCredentialsFileBytes) {
    return invalid(absl::StrCat("holds ", yaml.size(), " bytes, more than ",
                                kMaxCredentialsFileBytes));
  }
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& error) {
    return invalid(absl::StrCat("line ", error.mark.line + 1, ", column ", error.mark.column + 1,
                                ": ", error.msg));
  }
  if (!root.IsMap() || root.size() != 1 || !root["credentials"] ||
      !root["credentials"].IsSequence()) {
    return invalid("expected a mapping with one key, \"credentials\", holding a list of entries");
  }
  const YAML::Node list = root["credentials"];
  if (list.size() > static_cast<size_t>(kMaxCredentials)) {
    return invalid(absl::StrCat("holds ", list.size(), " credentials, more than ",
                                kMaxCredentials));
  }
  std::vector<Credential> credentials;
  credentials.reserve(list.size());
  size_t total_ranks = 0;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node entry = list[i];
    const int index = static_cast<int>(i);
    if (!entry.IsMap()) {
      return invalid(absl::StrCat(At(entry), Entry(index, ""), " is not a mapping"));
    }
    Credential c;
    if (entry["name"] && entry["name"].IsScalar()) c.name = entry["name"].Scalar();
    std::string scope;
    std::vector<std::string> seen;
    for (auto it = entry.begin(); it != entry.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "";
      const YAML::Node value = it->second;
      const auto where = [&] { return absl::StrCat(At(it->first), Entry(index, c.name), ": "); };
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
        return invalid(absl::StrCat(where(), Echo(key), " is given twice"));
      }
      seen.push_back(key);
      static constexpr absl::string_view kKeys[] = {"name",  "scope",        "deployment", "ranks",
                                                    "token", "token_sha256", "identity"};
      if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys)) {
        return invalid(absl::StrCat(where(), "unknown key ", Echo(key),
                                    " (expected name, scope, deployment, ranks, token, "
                                    "token_sha256 or identity)"));
      }
      if (key == "ranks") {
        if (!value.IsSequence()) return invalid(absl::StrCat(where(), "ranks is not a list"));
        total_ranks += value.size();
        if (value.size() > 65536 || total_ranks > kMaxRanksListed) {
          return invalid(absl::StrCat(where(), "ranks lists ", value.size(),
                                      " ranks; at most 65536 per credential and ",
                                      kMaxRanksListed, " in all"));
        }
        for (size_t r = 0; r < value.size(); ++r) {
          int64_t rank = -1;
          if (!value[r].IsScalar() || !YAML::convert<int64_t>::decode(value[r], rank) ||
              rank < 0 || rank >= 65536) {
            return invalid(absl::StrCat(where(), "ranks[", r, "] is not a rank in [0, 65536)"));
          }
          c.ranks.push_back(static_cast<int32_t>(rank));
        }
        continue;
      }
      if (!value.IsScalar()) {
        return invalid(absl::StrCat(where(), Echo(key), " is not a scalar"));
      }
      if (key == "name") {
      } else if (key == "scope") {
        scope = value.Scalar();
      } else if (key == "deployment") {
        c.deployment = value.Scalar();
      } else if (key == "token") {
        c.token = value.Scalar();
      } else if (key == "token_sha256") {
        c.token_sha256 = absl::AsciiStrToLower(value.Scalar());
      } else if (key == "identity") {
        c.identity = value.Scalar();
      }
    }
    const std::string what = Entry(index, c.name);
    if (scope == "admin") {
      c.scope = Scope::kAdmin;
    } else if (scope == "read") {
      c.scope = Scope::kRead;
    } else if (scope == "deployment") {
      c.scope = Scope::kDeployment;
    } else {
      return invalid(absl::StrCat(At(entry), what, ": scope ", Echo(scope),
                                  " is not admin, read or deployment"));
    }
    credentials.push_back(std::move(c));
  }
  return credentials;
}

AccessControl::AccessControl() = default;

absl::StatusOr<AccessControl> AccessControl::Create(absl::string_view shared_token,
                                                    std::vector<Credential> credentials,
                                                    bool mutual_tls) {
  AccessControl access;
  if (!shared_token.empty()) {
    credentials.insert(credentials.begin(),
                       Credential{.name = "bearer-token", .token = std::string(shared_token)});
  }
  access.enforcing_ = !credentials.empty() || mutual_tls;
  access.certificates_are_admin_ = mutual_tls && credentials.empty();
  absl::flat_hash_map<std::string, int> names;
  for (size_t i = 0; i < credentials.size(); ++i) {
    Credential& c = credentials[i];
    const int index = static_cast<int>(i) - (shared_token.empty() ? 0 : 1);
    const std::string what = index < 0 ? "the bearer token" : Entry(index, c.name);
    const auto invalid = [&](const std::string& message) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", message));
    };
    if (c.name.empty() || c.name.size() > 128 || !PrintableToken(c.name)) {
      return invalid("name is required: 1 … 128 printable characters without spaces");
    }
    if (!names.emplace(c.name, index).second) {
      return invalid(absl::StrCat("name ", Echo(c.name), " is used by credentials[",
                                  names[c.name], "] too"));
    }
    if (c.scope == Scope::kDeployment) {
      if (c.deployment.empty()) return invalid("deployment is required with scope deployment");
      std::sort(c.ranks.begin(), c.ranks.end());
      c.ranks.erase(std::unique(c.ranks.begin(), c.ranks.end()), c.ranks.end());
    } else if (!c.deployment.empty() || !c.ranks.empty()) {
      return invalid("deployment and ranks belong to scope deployment only");
    }
    const int ways = !c.token.empty() + !c.token_sha256.empty() + !c.identity.empty();
    if (ways != 1) {
      return invalid("give exactly one of token, token_sha256 and identity");
    }
    Digest digest{};
    if (!c.token.empty()) {
      if (c.token.size() < kMinTokenBytes || c.token.size() > kMaxTokenBytes ||
          !PrintableToken(c.token)) {
        return invalid(absl::StrCat("the token has ", c.token.size(), " bytes; a token is ",
                                    kMinTokenBytes, " … ", kMaxTokenBytes,
                                    " printable characters without spaces (e.g. openssl rand "
                                    "-hex 32)"));
      }
      digest = Sha256(c.token);
      c.token.clear();  // only the digest is kept
    } else if (!c.token_sha256.empty()) {
      if (c.token_sha256.size() != 64 ||
          !std::all_of(c.token_sha256.begin(), c.token_sha256.end(), absl::ascii_isxdigit)) {
        return invalid("token_sha256 is not 64 hexadecimal digits");
      }
      const std::string bytes = absl::HexStringToBytes(c.token_sha256);
      std::memcpy(digest.data(), bytes.data(), digest.size());
    }
    if (!c.identity.empty()) {
      if (!mutual_tls) {
        return invalid("identity needs mutual TLS (a client CA, --tls-client-ca)");
      }
      if (!access.by_identity_.emplace(c.identity, static_cast<int>(i)).second) {
        return invalid(absl::StrCat("identity ", Echo(c.identity), " is named twice"));
      }
    } else if (!access.by_token_.emplace(digest, static_cast<int>(i)).second) {
      return invalid("its token is the token of another credential");
    }
  }
  access.credentials_ = std::move(credentials);
  return access;
}

absl::StatusOr<const Credential*> AccessControl::Identify(
    std::optional<absl::string_view> authorization,
    const std::vector<std::string>& identities) const {
  if (!enforcing_) return &Anonymous();
  const auto refuse = [](absl::string_view message) {
    return ErrorWithDetail(absl::StatusCode::kUnauthenticated, v1::UNAUTHENTICATED_TOKEN,
                           "authorization", message);
  };
  if (authorization.has_value()) {
    if (!absl::StartsWith(*authorization, kBearer)) {
      return refuse("the authorization metadata is not \"Bearer <token>\"");
    }
    const absl::string_view token = authorization->substr(kBearer.size());
    if (const auto it = by_token_.find(Sha256(token)); it != by_token_.end()) {
      return &credentials_[it->second];
    }
    return refuse("wrong bearer token");
  }
  for (const std::string& identity : identities) {
    if (const auto it = by_identity_.find(identity); it != by_identity_.end()) {
      return &credentials_[it->second];
    }
  }
  if (!identities.empty()) {
    if (certificates_are_admin_) return &CertificateAdmin();
    return refuse(absl::StrCat("no credential names the client certificate (",
                               Echo(identities.front()), ") and no bearer token was sent"));
  }
  return refuse("missing bearer token (authorization metadata)");
}

absl::Status AccessControl::CheckAdmin(const Credential& caller, absl::string_view what) {
  if (caller.scope == Scope::kAdmin) return absl::OkStatus();
  return Denied(caller, what, "", "that needs scope admin");
}

absl::Status AccessControl::CheckRead(const Credential& caller, absl::string_view what,
                                      absl::string_view deployment) {
  if (Sees(caller, deployment)) return absl::OkStatus();
  return Denied(caller, what, "deployment",
                absl::StrCat("deployment ", Echo(deployment), " is outside its scope"));
}

absl::Status AccessControl::CheckRank(const Credential& caller, absl::string_view what,
                                      absl::string_view deployment, int32_t rank) {
  switch (caller.scope) {
    case Scope::kAdmin:
      return absl::OkStatus();
    case Scope::kRead:
      return Denied(caller, what, "", "scope read does not report or acknowledge");
    case Scope::kDeployment:
      if (caller.deployment != deployment) {
        return Denied(caller, what, "deployment",
                      absl::StrCat("deployment ", Echo(deployment), " is outside its scope"));
      }
      if (!caller.ranks.empty() &&
          !std::binary_search(caller.ranks.begin(), caller.ranks.end(), rank)) {
        return Denied(caller, what, "rank", absl::StrCat("rank ", rank, " is outside its scope"));
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status AccessControl::CheckPublish(const Credential& caller, absl::string_view what,
                                         absl::string_view deployment) {
  if (caller.scope == Scope::kDeployment && caller.deployment == deployment &&
      !caller.ranks.empty() &&
      !std::binary_search(caller.ranks.begin(), caller.ranks.end(), 0)) {
    return Denied(caller, what, "",
                  "rendezvous values are written by rank 0 (the rank that bootstraps the agents' "
                  "communicator) or a credential of every rank");
  }
  return CheckRank(caller, what, deployment, 0);
}

bool AccessControl::Sees(const Credential& caller, absl::string_view deployment) {
  return caller.scope != Scope::kDeployment || caller.deployment == deployment;
}

}  // namespace eplb::server
