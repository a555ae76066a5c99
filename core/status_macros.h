// Early-return helpers for absl::Status / absl::StatusOr (Abseil 20220623 ships none).
#ifndef EPLB_CORE_STATUS_MACROS_H_
#define EPLB_CORE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define EPLB_STATUS_CONCAT_INNER_(a, b) a##b
#define EPLB_STATUS_CONCAT_(a, b) EPLB_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status eplb_status_ = (expr);        \
    if (!eplb_status_.ok()) return eplb_status_; \
  } while (false)

// `ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value of a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  EPLB_ASSIGN_OR_RETURN_IMPL_(EPLB_STATUS_CONCAT_(eplb_statusor_, __LINE__), lhs, expr)

#define EPLB_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)   \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // EPLB_CORE_STATUS_MACROS_H_
