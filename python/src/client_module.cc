// eplb._client: the planner's RPC client (client/) for Python: PlannerClient, LoadReporter and
// PlanWatcher, wrapped by the pure-Python module eplb.remote (which is what users import; this
// module is its implementation). gRPC lives here only: `import eplb` never loads this module.
//
// Messages cross as Python dicts made by reflection (field names as in planner.proto, enums as
// their names, timestamps as seconds since the epoch, repeated numbers as 1-D numpy arrays);
// specs come in as JSON text (protobuf's JSON parser, which names the field it cannot take).
// An RPC error raises eplb.remote.PlannerError with the gRPC code, the planner's reason and
// field; bad local options raise ValueError (FileNotFoundError / OSError for PEM files).
//
// Every call that may wait on the network or on a lock shared with a background thread releases
// the GIL, and no background thread ever takes the GIL: plans are kept here and handed out on the
// caller's thread (PlanWatcher.wait / plan), so a watcher or reporter can never deadlock with the
// interpreter, at shutdown or otherwise.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/json_util.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <deque>
#include <thread>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/load_reporter.h"
#include "client/plan_watcher.h"
#include "client/planner_client.h"
#include "core/expert_map.h"
#include "core/plan_delivery.h"
#include "eplb/v1/planner.pb.h"
#include "proto/convert.h"

namespace py = pybind11;
namespace protobuf = google::protobuf;

namespace eplb::python {
namespace {

// Raises eplb.remote.PlannerError for an RPC error. REQUIRES: the GIL held.
[[noreturn]] void RaisePlannerError(const absl::Status& status) {
  const py::object type = py::module_::import("eplb.remote").attr("PlannerError");
  const std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  const py::object error =
      type(std::string(status.message()), absl::StatusCodeToString(status.code()),
           detail ? py::object(py::str(v1::ErrorReason_Name(detail->reason()))) : py::none(),
           detail && !detail->field().empty() ? py::object(py::str(detail->field())) : py::none());
  PyErr_SetObject(type.ptr(), error.ptr());
  throw py::error_already_set();
}

template <typename T>
T ValueOrRaise(absl::StatusOr<T> value) {
  if (!value.ok()) RaisePlannerError(value.status());
  return *std::move(value);
}

void RaiseIfError(const absl::Status& status) {
  if (!status.ok()) RaisePlannerError(status);
}

// Local bad input: ValueError with the message (the option or the field is named in it).
void ThrowIfInvalid(const absl::Status& status) {
  if (status.ok()) return;
  const std::string message(status.message());
  if (status.code() == absl::StatusCode::kInvalidArgument) throw py::value_error(message);
  if (status.code() == absl::StatusCode::kNotFound) {
    PyErr_SetString(PyExc_FileNotFoundError, message.c_str());
    throw py::error_already_set();
  }
  PyErr_SetString(PyExc_OSError, message.c_str());
  throw py::error_already_set();
}

// ---- Messages as dicts ---------------------------------------------------------------------------

py::object ToPython(const protobuf::Message& message);

template <typename T>
py::array_t<T> RepeatedArray(const protobuf::Message& message, const protobuf::FieldDescriptor* f) {
  const auto values = message.GetReflection()->GetRepeatedFieldRef<T>(message, f);
  py::array_t<T> out(static_cast<py::ssize_t>(values.size()));
  T* data = out.mutable_data();
  for (int i = 0; i < values.size(); ++i) data[i] = values.Get(i);
  return out;
}

py::object Scalar(const protobuf::Message& m, const protobuf::FieldDescriptor* f) {
  const protobuf::Reflection* r = m.GetReflection();
  using F = protobuf::FieldDescriptor;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32: return py::int_(r->GetInt32(m, f));
    case F::CPPTYPE_INT64: return py::int_(r->GetInt64(m, f));
    case F::CPPTYPE_UINT32: return py::int_(r->GetUInt32(m, f));
    case F::CPPTYPE_UINT64: return py::int_(r->GetUInt64(m, f));
    case F::CPPTYPE_DOUBLE: return py::float_(r->GetDouble(m, f));
    case F::CPPTYPE_FLOAT: return py::float_(r->GetFloat(m, f));
    case F::CPPTYPE_BOOL: return py::bool_(r->GetBool(m, f));
    case F::CPPTYPE_ENUM: return py::str(r->GetEnum(m, f)->name());
    case F::CPPTYPE_STRING:
      if (f->type() == F::TYPE_BYTES) return py::bytes(r->GetString(m, f));
      return py::str(r->GetString(m, f));
    case F::CPPTYPE_MESSAGE: return ToPython(r->GetMessage(m, f));
  }
  return py::none();
}

py::object Repeated(const protobuf::Message& m, const protobuf::FieldDescriptor* f) {
  using F = protobuf::FieldDescriptor;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32: return RepeatedArray<int32_t>(m, f);
    case F::CPPTYPE_INT64: return RepeatedArray<int64_t>(m, f);
    case F::CPPTYPE_UINT32: return RepeatedArray<uint32_t>(m, f);
    case F::CPPTYPE_UINT64: return RepeatedArray<uint64_t>(m, f);
    case F::CPPTYPE_DOUBLE: return RepeatedArray<double>(m, f);
    case F::CPPTYPE_FLOAT: return RepeatedArray<float>(m, f);
    default: break;
  }
  const protobuf::Reflection* r = m.GetReflection();
  py::list out;
  for (int i = 0; i < r->FieldSize(m, f); ++i) {
    switch (f->cpp_type()) {
      case F::CPPTYPE_BOOL: out.append(py::bool_(r->GetRepeatedBool(m, f, i))); break;
      case F::CPPTYPE_ENUM: out.append(py::str(r->GetRepeatedEnum(m, f, i)->name())); break;
      case F::CPPTYPE_STRING:
        if (f->type() == F::TYPE_BYTES) {
          out.append(py::bytes(r->GetRepeatedString(m, f, i)));
        } else {
          out.append(py::str(r->GetRepeatedString(m, f, i)));
        }
        break;
      default: out.append(ToPython(r->GetRepeatedMessage(m, f, i))); break;
    }
  }
  return out;
}

// A message as a dict: every scalar field (proto3 defaults included), message fields that are
// set (absent ones are left out), repeated fields always. A Timestamp is seconds since the epoch.
py::object ToPython(const protobuf::Message& message) {
  const protobuf::Descriptor* d = message.GetDescriptor();
  if (d->full_name() == "google.protobuf.Timestamp") {
    const auto& t = static_cast<const protobuf::Timestamp&>(message);
    return py::float_(static_cast<double>(t.seconds()) + t.nanos() * 1e-9);
  }
  const protobuf::Reflection* r = message.GetReflection();
  py::dict out;
  for (int i = 0; i < d->field_count(); ++i) {
    const protobuf::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) {
      out[py::str(f->name())] = Repeated(message, f);
    } else if (f->has_presence() && !r->HasField(message, f)) {
      continue;
    } else {
      out[py::str(f->name())] = Scalar(message, f);
    }
  }
  return out;
}

template <typename T>
py::list ToPythonList(const std::vector<T>& messages) {
  py::list out;
  for (const T& m : messages) out.append(ToPython(m));
  return out;
}

// ---- PlannerClient -------------------------------------------------------------------------------

using client::PlannerClient;

// A positive, finite number of seconds as a Duration; ValueError naming `name` otherwise.
absl::Duration Seconds(double seconds, const char* name) {
  if (!(seconds > 0) || !std::isfinite(seconds)) {
    throw py::value_error(
        absl::StrCat(name, " = ", seconds, " must be a positive number of seconds"));
  }
  return absl::Seconds(seconds);
}

std::shared_ptr<PlannerClient> MakeClient(const std::string& server, const std::string& token,
                                          const std::string& tls_ca_file,
                                          const std::string& tls_cert_file,
                                          const std::string& tls_key_file,
                                          const std::string& tls_server_name, double timeout) {
  client::PlannerClientOptions options{
      .server = server, .bearer_token = token, .tls_ca_file = tls_ca_file,
      .tls_cert_file = tls_cert_file, .tls_key_file = tls_key_file,
      .tls_server_name = tls_server_name, .rpc_timeout = Seconds(timeout, "timeout")};
  absl::StatusOr<std::unique_ptr<PlannerClient>> client;
  {
    py::gil_scoped_release release;
    client = PlannerClient::Create(options);
  }
  if (!client.ok()) ThrowIfInvalid(client.status());
  return std::shared_ptr<PlannerClient>(std::move(*client));
}

// Runs `call` without the GIL and returns its value as a Python object made by `convert`.
template <typename Call, typename Convert>
py::object Rpc(Call&& call, Convert&& convert) {
  std::optional<decltype(call())> result;
  {
    py::gil_scoped_release release;
    result.emplace(call());
  }
  return convert(ValueOrRaise(*std::move(result)));
}

v1::DeploymentSpec SpecFromJson(const std::string& json) {
  v1::DeploymentSpec spec;
  const auto parsed = protobuf::util::JsonStringToMessage(json, &spec);
  if (!parsed.ok()) {
    throw py::value_error(absl::StrCat("deployment spec: ", std::string(parsed.message())));
  }
  return spec;
}

// ---- LoadReporter --------------------------------------------------------------------------------

// Keeps the client alive as long as the reporter. Sums handed over with AddLater() are added by
// a thread of the wrapper's own (C++: it never takes the GIL), in order, so that the serving
// thread only copies them; every other call first waits until those are added.
class Reporter {
 public:
  Reporter(std::shared_ptr<PlannerClient> client, std::unique_ptr<client::LoadReporter> reporter,
           int32_t num_layers)
      : client_(std::move(client)),
        reporter_(std::move(reporter)),
        num_layers_(num_layers),
        worker_([this] { Run(); }) {}
  ~Reporter() { Close(); }

  // The reporter once everything handed over is added. REQUIRES: the GIL held (released here
  // while waiting).
  client::LoadReporter& get() {
    {
      py::gil_scoped_release release;
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Reporter* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) { return r->idle_(); }, this));
      if (!stopping_) return *reporter_;
    }
    throw py::value_error("the LoadReporter is closed");
  }

  // Queues `counts` over steps first … last for the thread to add.
  void AddLater(int64_t first, int64_t last, int64_t version, std::vector<double> counts) {
    Queue(Sum{first, last, version, std::move(counts)});
  }

  // The map that sums given per slot with AddSlotsLater(…, epoch, …) were routed through: phy2log
  // (L × P, each in [−1, num_experts); −1: an empty slot, counted nowhere), kept until a sum of a
  // newer epoch has been added.
  void SetSlotMap(int64_t epoch, std::vector<int32_t> phy2log, int32_t num_experts) {
    absl::MutexLock lock(&mu_);
    slot_maps_[epoch] = SlotMap{std::move(phy2log), num_experts};
  }

  // Queues counts per slot (L × P, of the map set for `epoch`) over steps first … last; the
  // thread sums them per logical expert and adds them.
  void AddSlotsLater(int64_t first, int64_t last, int64_t version, int64_t epoch,
                     std::vector<double> slots) {
    Queue(Sum{first, last, version, std::move(slots), epoch});
  }

  // The first error of a sum the thread added (then cleared): "" when there was none.
  std::string TakeLaterError() {
    absl::MutexLock lock(&mu_);
    return std::exchange(later_error_, "");
  }

  void Close() {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    auto finish = [&] {
      worker_.join();
      reporter_.reset();  // sends what is pending once more
    };
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      finish();
    } else {
      finish();
    }
  }

 private:
  struct Sum {
    int64_t first, last, version;
    std::vector<double> counts;
    int64_t epoch = -1;  // ≥ 0: counts per slot of that epoch's map
  };
  struct SlotMap {
    std::vector<int32_t> phy2log;
    int32_t num_experts = 0;
  };

  bool idle_() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || (queue_.empty() && !busy_);
  }

  void Queue(Sum sum) {
    absl::MutexLock lock(&mu_);
    if (stopping_) throw py::value_error("the LoadReporter is closed");
    queue_.push_back(std::move(sum));
  }

  void Run() {
    for (;;) {
      Sum sum;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](Reporter* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
              return r->stopping_ || !r->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // stopping, all added
        sum = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
        if (sum.epoch >= 0) {
          // Sums come in epoch order: older maps are needed no more.
          slot_maps_.erase(slot_maps_.begin(), slot_maps_.lower_bound(sum.epoch));
          const auto map = slot_maps_.find(sum.epoch);
          if (map == slot_maps_.end() || map->second.phy2log.size() != sum.counts.size()) {
            sum.counts.clear();  // AddSteps refuses it, naming the size
          } else {
            const size_t slots = map->second.phy2log.size();
            const size_t layers = static_cast<size_t>(num_layers_);
            const size_t per_layer = slots / std::max<size_t>(layers, 1);
            const size_t experts = static_cast<size_t>(map->second.num_experts);
            std::vector<double> logical(layers * experts, 0.0);
            for (size_t i = 0; i < slots; ++i) {
              const int32_t expert = map->second.phy2log[i];
              if (expert < 0) continue;  // an empty slot
              logical[(i / per_layer) * experts + static_cast<size_t>(expert)] += sum.counts[i];
            }
            sum.counts = std::move(logical);
          }
        }
      }
      const absl::Status added =
          reporter_->AddSteps(sum.first, sum.last, sum.version, sum.counts);
      absl::MutexLock lock(&mu_);
      busy_ = false;
      if (!added.ok() && later_error_.empty()) {
        later_error_ = absl::StrCat("steps ", sum.first, " … ", sum.last, ": ", added.message());
      }
    }
  }

  std::shared_ptr<PlannerClient> client_;
  std::unique_ptr<client::LoadReporter> reporter_;
  const int32_t num_layers_;
  absl::Mutex mu_;
  std::deque<Sum> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string later_error_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, SlotMap> slot_maps_ ABSL_GUARDED_BY(mu_);
  std::thread worker_;  // last: started once the members it uses exist
};

// The elements of a C-contiguous numeric array as doubles (one pass; int32 and float64 without a
// temporary array).
std::vector<double> AsDoubles(const py::array& array) {
  const py::ssize_t n = array.size();
  if (py::isinstance<py::array_t<int32_t, py::array::c_style>>(array)) {
    const auto* data = static_cast<const int32_t*>(array.data());
    return std::vector<double>(data, data + n);
  }
  if (py::isinstance<py::array_t<double, py::array::c_style>>(array)) {
    const auto* data = static_cast<const double*>(array.data());
    return std::vector<double>(data, data + n);
  }
  const auto converted = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(array);
  if (!converted) throw py::error_already_set();
  return std::vector<double>(converted.data(), converted.data() + n);
}

std::span<const double> Counts(const py::array_t<double, py::array::c_style | py::array::forcecast>&
                                   counts) {
  return {counts.data(), static_cast<size_t>(counts.size())};
}

py::dict ReporterStats(const client::LoadReporter::Stats& s) {
  py::dict out;
  out["steps_added"] = s.steps_added;
  out["reports_accepted"] = s.reports_accepted;
  out["reports_pending"] = s.reports_pending;
  out["reports_merged"] = s.reports_merged;
  out["reports_dropped"] = s.reports_dropped;
  out["failed_attempts"] = s.failed_attempts;
  out["reports_resent"] = s.reports_resent;
  out["last_error"] = s.last_error;
  return out;
}

// ---- PlanWatcher ---------------------------------------------------------------------------------

// The watcher's committed plans, kept for the caller's thread. The watcher thread only stores
// (under mu); Python reads with wait() and plan().
class Watcher {
 public:
  Watcher(std::shared_ptr<PlannerClient> client, std::string deployment, int32_t rank,
          int32_t keep, absl::Duration max_backoff)
      : client_(std::move(client)), keep_(keep) {
    client::PlanWatcherOptions options{
        .deployment = std::move(deployment), .rank = rank, .max_backoff = max_backoff};
    options.on_error = [this](const absl::Status& status) {
      absl::MutexLock lock(&mu_);
      error_ = status;
    };
    watcher_ = ValueOrRaise(client::PlanWatcher::Create(client_.get(), std::move(options)));
    watcher_->Start([this](const AgentPlan& plan) { OnPlan(plan); });
  }
  ~Watcher() { Close(); }

  void Close() {
    std::unique_ptr<client::PlanWatcher> done = std::move(watcher_);
    if (!done) return;
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      done->Stop();
    } else {
      done->Stop();
    }
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

  // Waits (without the GIL) until a committed plan newer than `after` is held, the watcher
  // stopped, or `timeout` seconds passed; returns the newest version held (0: none).
  int64_t Wait(int64_t after, double timeout) {
    py::gil_scoped_release release;
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return closed_ || !error_.ok() || Newest() > after;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(std::max(0.0, timeout)));
    return Newest();
  }

  // The committed versions held, oldest first.
  std::vector<int64_t> Held() {
    py::gil_scoped_release release;
    absl::MutexLock lock(&mu_);
    std::vector<int64_t> out;
    for (const auto& [version, plan] : plans_) out.push_back(version);
    return out;
  }

  // The tables of a committed version held: (hash, phy2log [L, P], log2phy [L, E, W],
  // logcnt [L, E], R), or None.
  py::object Plan(int64_t version) {
    std::shared_ptr<const ExpertMap> map;
    uint64_t hash = 0;
    {
      absl::MutexLock lock(&mu_);
      const auto it = plans_.find(version);
      if (it == plans_.end()) return py::none();
      map = it->second.map;
      hash = it->second.map_hash;
    }
    const py::ssize_t layers = map->num_layers();
    const py::ssize_t experts = map->num_logical_experts();
    const py::ssize_t slots = map->num_physical_experts();
    py::array_t<int32_t> phy2log({layers, slots});
    std::copy(map->phy2log_table().begin(), map->phy2log_table().end(), phy2log.mutable_data());
    const std::vector<int32_t> padded = map->PaddedLog2Phy();
    py::array_t<int32_t> log2phy({layers, experts, static_cast<py::ssize_t>(map->log2phy_width())});
    std::copy(padded.begin(), padded.end(), log2phy.mutable_data());
    py::array_t<int32_t> logcnt({layers, experts});
    std::copy(map->logcnt_table().begin(), map->logcnt_table().end(), logcnt.mutable_data());
    return py::make_tuple(hash, phy2log, log2phy, logcnt, map->num_ranks());
  }

  void Ack(int64_t version, const std::string& state, uint64_t map_hash, const std::string& error) {
    AgentAck ack{.version = version, .map_hash = map_hash, .error = error};
    if (state == "staged") {
      ack.kind = AckKind::kStaged;
    } else if (state == "active") {
      ack.kind = AckKind::kActive;
    } else if (state == "failed") {
      ack.kind = AckKind::kFailed;
    } else {
      throw py::value_error(absl::StrCat("state = \"", state,
                                         "\" is not one of: staged, active, failed"));
    }
    if (version < 1) throw py::value_error(absl::StrCat("version = ", version, " must be ≥ 1"));
    if (!watcher_) throw py::value_error("the PlanWatcher is closed");
    py::gil_scoped_release release;
    watcher_->Ack(ack);
  }

  py::dict Stats() {
    client::PlanWatcher::Stats s;
    absl::Status error;
    {
      py::gil_scoped_release release;
      if (watcher_) s = watcher_->stats();
      absl::MutexLock lock(&mu_);
      error = error_;
    }
    py::dict out;
    out["plans_received"] = s.plans_received;
    out["acks_sent"] = s.acks_sent;
    out["reconnects"] = s.reconnects;
    out["connected"] = s.connected;
    out["last_error"] = s.last_error;
    return out;
  }

  // Raises the error that stopped the watcher, if any.
  void RaiseIfStopped() {
    absl::Status error;
    {
      absl::MutexLock lock(&mu_);
      error = error_;
    }
    RaiseIfError(error);
  }

 private:
  int64_t Newest() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return plans_.empty() ? 0 : plans_.rbegin()->first;
  }

  void OnPlan(const AgentPlan& plan) {
    if (plan.status != PlanStatus::kCommitted || plan.map == nullptr) return;
    absl::MutexLock lock(&mu_);
    if (!plans_.empty() && plan.version < plans_.rbegin()->first) {
      // A deployment created again under the same name starts over from version 1.
      if (plans_.count(plan.version) == 0) plans_.clear();
    }
    plans_[plan.version] = plan;
    while (static_cast<int32_t>(plans_.size()) > keep_) plans_.erase(plans_.begin());
  }

  const std::shared_ptr<PlannerClient> client_;
  const int32_t keep_;
  std::unique_ptr<client::PlanWatcher> watcher_;
  absl::Mutex mu_;
  std::map<int64_t, AgentPlan> plans_ ABSL_GUARDED_BY(mu_);  // committed, by version
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

PYBIND11_MODULE(_client, m) {
  m.doc() = "The planner's RPC client (implementation of eplb.remote; import that instead).";

  py::class_<PlannerClient, std::shared_ptr<PlannerClient>>(m, "Client")
      .def(py::init(&MakeClient), py::arg("server"), py::arg("token"), py::arg("tls_ca_file"),
           py::arg("tls_cert_file"), py::arg("tls_key_file"), py::arg("tls_server_name"),
           py::arg("timeout"))
      .def("create_deployment",
           [](PlannerClient& c, const std::string& spec_json) {
             const v1::DeploymentSpec spec = SpecFromJson(spec_json);
             return Rpc([&] { return c.CreateDeployment(spec); },
                        [](const v1::Deployment& d) { return ToPython(d); });
           })
      .def("get_deployment",
           [](PlannerClient& c, const std::string& name) {
             return Rpc([&] { return c.GetDeployment(name); },
                        [](const v1::Deployment& d) { return ToPython(d); });
           })
      .def("list_deployments",
           [](PlannerClient& c) {
             return Rpc([&] { return c.ListDeployments(); },
                        [](const std::vector<v1::Deployment>& d) { return ToPythonList(d); });
           })
      .def("delete_deployment",
           [](PlannerClient& c, const std::string& name) {
             absl::Status status;
             {
               py::gil_scoped_release release;
               status = c.DeleteDeployment(name);
             }
             RaiseIfError(status);
           })
      .def("get_plan",
           [](PlannerClient& c, const std::string& deployment, int64_t version) {
             return Rpc([&] { return c.GetPlan(deployment, version); },
                        [](const v1::Plan& p) { return ToPython(p); });
           })
      .def("list_plans",
           [](PlannerClient& c, const std::string& deployment, bool include_maps) {
             return Rpc([&] { return c.ListPlans(deployment, include_maps); },
                        [](const std::vector<v1::Plan>& p) { return ToPythonList(p); });
           })
      .def("rebalance",
           [](PlannerClient& c, const std::string& deployment, bool dry_run) {
             return Rpc([&] { return c.Rebalance(deployment, dry_run); },
                        [](const v1::Plan& p) { return ToPython(p); });
           })
      .def("get_load", [](PlannerClient& c, const std::string& deployment) {
        return Rpc([&] { return c.GetLoad(deployment); },
                   [](const v1::GetLoadResponse& r) { return ToPython(r); });
      });

  py::class_<Reporter>(m, "Reporter")
      .def(py::init([](std::shared_ptr<PlannerClient> c, const std::string& deployment,
                       int32_t rank, int32_t num_layers, int32_t num_experts,
                       int64_t flush_every_steps, int32_t max_pending_reports,
                       int64_t max_report_bytes, uint64_t session, double max_backoff) {
             client::LoadReporterOptions options{
                 .deployment = deployment, .rank = rank, .num_layers = num_layers,
                 .num_experts = num_experts, .flush_every_steps = flush_every_steps,
                 .max_pending_reports = max_pending_reports,
                 .max_report_bytes = max_report_bytes,
                 .max_backoff = Seconds(max_backoff, "max_backoff"),
                 .session = session};
             auto reporter = client::LoadReporter::Create(c.get(), options);
             if (!reporter.ok()) ThrowIfInvalid(reporter.status());
             return std::make_unique<Reporter>(std::move(c), std::move(*reporter), num_layers);
           }),
           py::arg("client"), py::arg("deployment"), py::arg("rank"), py::arg("num_layers"),
           py::arg("num_experts"), py::arg("flush_every_steps"), py::arg("max_pending_reports"),
           py::arg("max_report_bytes"), py::arg("session"), py::arg("max_backoff"))
      .def("add_step",
           [](Reporter& r, int64_t step, int64_t plan_version,
              const py::array_t<double, py::array::c_style | py::array::forcecast>& counts) {
             client::LoadReporter& reporter = r.get();
             absl::Status status;
             {
               py::gil_scoped_release release;
               status = reporter.AddStep(step, plan_version, Counts(counts));
             }
             ThrowIfInvalid(status);
           })
      .def("add_steps",
           [](Reporter& r, int64_t first_step, int64_t last_step, int64_t plan_version,
              const py::array_t<double, py::array::c_style | py::array::forcecast>& counts) {
             client::LoadReporter& reporter = r.get();
             absl::Status status;
             {
               py::gil_scoped_release release;
               status = reporter.AddSteps(first_step, last_step, plan_version, Counts(counts));
             }
             ThrowIfInvalid(status);
           })
      .def("add_steps_later",
           [](Reporter& r, int64_t first_step, int64_t last_step, int64_t plan_version,
              const py::array_t<double, py::array::c_style | py::array::forcecast>& counts) {
             const double* data = counts.data();
             r.AddLater(first_step, last_step, plan_version,
                        std::vector<double>(data, data + counts.size()));
           })
      .def("set_slot_map",
           [](Reporter& r, int64_t epoch,
              const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& phy2log,
              int32_t num_experts) {
             const int32_t* data = phy2log.data();
             for (py::ssize_t i = 0; i < phy2log.size(); ++i) {
               if (data[i] < -1 || data[i] >= num_experts) {
                 throw py::value_error(absl::StrCat("phy2log has ", data[i], " at ", i,
                                                    ", out of range [-1, ", num_experts, ")"));
               }
             }
             r.SetSlotMap(epoch, std::vector<int32_t>(data, data + phy2log.size()), num_experts);
           })
      .def("add_slots_later",
           [](Reporter& r, int64_t first_step, int64_t last_step, int64_t plan_version,
              int64_t epoch, const py::array& counts) {
             r.AddSlotsLater(first_step, last_step, plan_version, epoch, AsDoubles(counts));
           })
      .def("take_later_error", &Reporter::TakeLaterError)
      .def("flush",
           [](Reporter& r, double timeout) {
             client::LoadReporter& reporter = r.get();
             absl::Status status;
             {
               py::gil_scoped_release release;
               status = reporter.Flush(absl::Seconds(std::max(0.0, timeout)));
             }
             return status.ok();
           })
      .def("stats",
           [](Reporter& r) {
             client::LoadReporter& reporter = r.get();
             client::LoadReporter::Stats stats;
             {
               py::gil_scoped_release release;
               stats = reporter.stats();
             }
             return ReporterStats(stats);
           })
      .def("close", &Reporter::Close);

  py::class_<Watcher>(m, "Watcher")
      .def(py::init([](std::shared_ptr<PlannerClient> c, const std::string& deployment,
                       int32_t rank, int32_t keep, double max_backoff) {
             if (keep < 1) throw py::value_error(absl::StrCat("keep = ", keep, " must be ≥ 1"));
             return std::make_unique<Watcher>(std::move(c), deployment, rank, keep,
                                              Seconds(max_backoff, "max_backoff"));
           }),
           py::arg("client"), py::arg("deployment"), py::arg("rank"), py::arg("keep"),
           py::arg("max_backoff"))
      .def("wait", &Watcher::Wait, py::arg("after"), py::arg("timeout"))
      .def("held", &Watcher::Held)
      .def("plan", &Watcher::Plan, py::arg("version"))
      .def("ack", &Watcher::Ack, py::arg("version"), py::arg("state"), py::arg("map_hash"),
           py::arg("error"))
      .def("stats", &Watcher::Stats)
      .def("raise_if_stopped", &Watcher::RaiseIfStopped)
      .def("close", &Watcher::Close);
}

}  // namespace eplb::python
