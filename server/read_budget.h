// ReadBudget: bytes that request messages being received and parsed may take, shared by every
// ReportLoad stream.
//
// gRPC buffers a message whole once its stream has a read pending, whatever its size; a stream
// without a pending read takes no more than its HTTP/2 window. So a stream reserves the most a
// message may cost (wire bytes and the parsed message) before it starts a read, and gives the
// bytes back once the message is consumed. Streams that find the budget spent wait, in arrival
// order, without reading: the messages being received and parsed stay within the budget however
// many streams send at once, and no report is refused for it (a waiting stream holds only what
// its HTTP/2 window admits, which gRPC's buffer quota accounts for). A stream that holds a
// reservation longer than the hold limit without its message arriving (a client that opened a
// stream and went quiet) is asked to give it back (CancelOverdue), so idle streams cannot keep
// the budget from others. Without a capacity nothing waits and nothing is overdue.
#ifndef EPLB_SERVER_READ_BUDGET_H_
#define EPLB_SERVER_READ_BUDGET_H_

#include <cstdint>
#include <deque>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"

namespace eplb::server {

class ReadBudget {
 public:
  // A budget of `capacity` bytes (0: unlimited, every reservation is granted at once). `clock`
  // must outlive the budget.
  ReadBudget(int64_t capacity, Clock* clock, absl::Duration hold_limit);
  ReadBudget(const ReadBudget&) = delete;
  ReadBudget& operator=(const ReadBudget&) = delete;

  using Ticket = uint64_t;

  // Reserves `bytes` (≤ capacity). If they are free and no one waits, sets *granted_now and
  // drops `granted`; else `granted` runs later on the thread of the Release or Withdraw that frees
  // them, in the order of Reserve calls, never under the budget's lock. Once granted, the bytes
  // are the caller's until it calls Release; `overdue` runs (under the budget's lock: it may only
  // ask the holder to stop, e.g. cancel its call) if they are held beyond the hold limit.
  Ticket Reserve(int64_t bytes, absl::AnyInvocable<void()> granted,
                 absl::AnyInvocable<void()> overdue, bool* granted_now);
  // Gives back a granted reservation; grants waiting ones that now fit.
  void Release(Ticket ticket);
  // The message a granted reservation was for has arrived: it is no longer overdue, however long
  // counting it takes.
  void Arrived(Ticket ticket);
  // Withdraws a waiting reservation: true if it was still waiting (`granted` will never run),
  // false if it was granted (its callback has run or is about to; Release it then).
  bool Withdraw(Ticket ticket);
  // Runs `overdue` once for each reservation held longer than the hold limit. Returns how many.
  int CancelOverdue();

  struct State {
    int64_t holding = 0;  // reservations granted and not released
    int64_t waiting = 0;
    int64_t bytes_in_use = 0;
  };
  State state() const;

 private:
  struct Waiter {
    Ticket ticket;
    int64_t bytes;
    absl::AnyInvocable<void()> granted;
    absl::AnyInvocable<void()> overdue;
  };
  struct Holder {
    int64_t bytes;
    absl::Time since;
    absl::AnyInvocable<void()> overdue;  // empty once run
  };
  // Moves the waiters that fit now to holders_, returning their `granted` callbacks to be run
  // outside the lock.
  std::deque<absl::AnyInvocable<void()>> GrantLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t capacity_;
  Clock* const clock_;
  const absl::Duration hold_limit_;
  mutable absl::Mutex mu_;
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  Ticket next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Ticket, Holder> holders_ ABSL_GUARDED_BY(mu_);
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_READ_BUDGET_H_
