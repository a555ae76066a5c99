#include "server/read_budget.h"

#include <utility>

#include "core/check.h"

namespace eplb::server {

ReadBudget::ReadBudget(int64_t capacity, Clock* clock, absl::Duration hold_limit)
    : capacity_(capacity), clock_(clock), hold_limit_(hold_limit) {}

ReadBudget::Ticket ReadBudget::Reserve(int64_t bytes, absl::AnyInvocable<void()> granted,
                                       absl::AnyInvocable<void()> overdue, bool* granted_now) {
  EPLB_CHECK(bytes >= 0 && (capacity_ == 0 || bytes <= capacity_));
  absl::MutexLock lock(&mu_);
  const Ticket ticket = next_ticket_++;
  *granted_now = capacity_ == 0 || (waiters_.empty() && in_use_ + bytes <= capacity_);
  if (capacity_ == 0) overdue = nullptr;  // nothing to keep from others
  if (*granted_now) {
    in_use_ += bytes;
    holders_.emplace(ticket, Holder{bytes, clock_->Now(), std::move(overdue)});
  } else {
    waiters_.push_back({ticket, bytes, std::move(granted), std::move(overdue)});
  }
  return ticket;
}

void ReadBudget::Release(Ticket ticket) {
  std::deque<absl::AnyInvocable<void()>> grant;
  {
    absl::MutexLock lock(&mu_);
    const auto holder = holders_.find(ticket);
    EPLB_CHECK(holder != holders_.end());
    in_use_ -= holder->second.bytes;
    holders_.erase(holder);
    grant = GrantLocked();
  }
  for (auto& granted : grant) granted();
}

void ReadBudget::Arrived(Ticket ticket) {
  absl::MutexLock lock(&mu_);
  const auto holder = holders_.find(ticket);
  EPLB_CHECK(holder != holders_.end());
  holder->second.overdue = nullptr;
}

bool ReadBudget::Withdraw(Ticket ticket) {
  std::deque<absl::AnyInvocable<void()>> grant;
  bool withdrawn = false;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (it->ticket != ticket) continue;
      waiters_.erase(it);
      withdrawn = true;
      // The one withdrawn may have been the head that did not fit, holding up smaller ones.
      grant = GrantLocked();
      break;
    }
  }
  for (auto& granted : grant) granted();
  return withdrawn;
}

int ReadBudget::CancelOverdue() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  int cancelled = 0;
  for (auto& [ticket, holder] : holders_) {
    if (holder.overdue == nullptr || now - holder.since <= hold_limit_) continue;
    std::exchange(holder.overdue, nullptr)();
    ++cancelled;
  }
  return cancelled;
}

std::deque<absl::AnyInvocable<void()>> ReadBudget::GrantLocked() {
  std::deque<absl::AnyInvocable<void()>> grant;
  const absl::Time now = clock_->Now();
  while (!waiters_.empty() && in_use_ + waiters_.front().bytes <= capacity_) {
    Waiter& waiter = waiters_.front();
    in_use_ += waiter.bytes;
    holders_.emplace(waiter.ticket, Holder{waiter.bytes, now, std::move(waiter.overdue)});
    grant.push_back(std::move(waiter.granted));
    waiters_.pop_front();
  }
  return grant;
}

ReadBudget::State ReadBudget::state() const {
  absl::MutexLock lock(&mu_);
  return {.holding = static_cast<int64_t>(holders_.size()),
          .waiting = static_cast<int64_t>(waiters_.size()),
          .bytes_in_use = in_use_};
}

}  // namespace eplb::server
