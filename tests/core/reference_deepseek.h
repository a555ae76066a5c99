// A literal, unoptimised transcription of the reference EPLB algorithm (the statement in
// core/deepseek_policy.h), used as the oracle for the
// `deepseek` policy. It follows the text step by step (linear scans instead of heaps, explicit
// permutations and their inverses) so that it shares no structure with the production code.
#ifndef EPLB_TESTS_CORE_REFERENCE_DEEPSEEK_H_
#define EPLB_TESTS_CORE_REFERENCE_DEEPSEEK_H_

#include <vector>

namespace eplb::testing_reference {

struct Tables {
  std::vector<int> phy2log;  // L × P
  std::vector<int> log2phy;  // L × E × (P − E + 1), −1 padded
  std::vector<int> logcnt;   // L × E
};

// pack(x, m): returns pack[i], pos[i].
inline void RefPack(const std::vector<float>& x, int m, std::vector<int>& pack,
                    std::vector<int>& pos) {
  const int n = static_cast<int>(x.size());
  const int cap = n / m;
  pack.assign(n, -1);
  pos.assign(n, -1);
  if (cap == 1) {
    for (int i = 0; i < n; ++i) {
      pack[i] = i;
      pos[i] = 0;
    }
    return;
  }
  // Visit order: decreasing x, equal values by increasing index.
  std::vector<bool> visited(n, false);
  std::vector<double> load(m, 0.0);
  std::vector<int> count(m, 0);
  for (int step = 0; step < n; ++step) {
    int item = -1;
    for (int i = 0; i < n; ++i) {
      if (!visited[i] && (item < 0 || x[i] > x[item])) item = i;
    }
    visited[item] = true;
    int best = -1;
    for (int j = 0; j < m; ++j) {
      if (count[j] < cap && (best < 0 || load[j] < load[best])) best = j;
    }
    pack[item] = best;
    pos[item] = count[best];
    count[best] += 1;
    load[best] += static_cast<double>(x[item]);
  }
}

// replicate(w, m): returns phy, rank, cnt.
inline void RefReplicate(const std::vector<float>& w, int m, std::vector<int>& phy,
                         std::vector<int>& rank, std::vector<int>& cnt) {
  const int n = static_cast<int>(w.size());
  phy.assign(m, -1);
  rank.assign(m, -1);
  cnt.assign(n, 1);
  for (int i = 0; i < n; ++i) {
    phy[i] = i;
    rank[i] = 0;
  }
  for (int i = n; i < m; ++i) {
    int r = 0;
    float best = w[0] / static_cast<float>(cnt[0]);
    for (int k = 1; k < n; ++k) {
      const float q = w[k] / static_cast<float>(cnt[k]);
      if (q > best) {
        best = q;
        r = k;
      }
    }
    phy[i] = r;
    rank[i] = cnt[r];
    cnt[r] += 1;
  }
}

inline Tables RefRebalance(const std::vector<std::vector<double>>& loads, int P, int G, int N,
                           int R) {
  const int L = static_cast<int>(loads.size());
  const int E = static_cast<int>(loads[0].size());
  if (G % N != 0) {
    G = 1;
    N = 1;
  }
  const int gs = E / G, gpn = G / N, En = E / N, Pn = P / N, Rn = R / N, S = P / R;
  const int W = P - E + 1;
  Tables out;
  out.phy2log.assign(L * P, -1);
  out.log2phy.assign(L * E * W, -1);
  out.logcnt.assign(L * E, 0);
  for (int l = 0; l < L; ++l) {
    std::vector<float> w(E);
    for (int e = 0; e < E; ++e) w[e] = static_cast<float>(loads[l][e]);
    // Step 1.
    std::vector<float> gw(G, 0.0f);
    for (int g = 0; g < G; ++g) {
      for (int j = 0; j < gs; ++j) gw[g] = gw[g] + w[g * gs + j];
    }
    std::vector<int> node, gpos;
    RefPack(gw, N, node, gpos);
    std::vector<int> m(E), minv(E);
    for (int e = 0; e < E; ++e) {
      const int g = e / gs, j = e % gs;
      m[e] = (node[g] * gpn + gpos[g]) * gs + j;
    }
    for (int e = 0; e < E; ++e) minv[m[e]] = e;
    std::vector<int> slot_log(P), slot_rank(P);
    std::vector<int> node_cnt(E);  // indexed by node-major index
    for (int n = 0; n < N; ++n) {
      // Step 2.
      std::vector<float> wl(En);
      for (int i = 0; i < En; ++i) wl[i] = w[minv[n * En + i]];
      std::vector<int> phy, rank, cnt;
      RefReplicate(wl, Pn, phy, rank, cnt);
      for (int i = 0; i < En; ++i) node_cnt[n * En + i] = cnt[i];
      // Step 3.
      std::vector<float> t(Pn);
      for (int i = 0; i < Pn; ++i) t[i] = wl[phy[i]] / static_cast<float>(cnt[phy[i]]);
      std::vector<int> gpu, pos;
      RefPack(t, Rn, gpu, pos);
      std::vector<int> q(Pn), qinv(Pn);
      for (int i = 0; i < Pn; ++i) q[i] = gpu[i] * S + pos[i];
      for (int i = 0; i < Pn; ++i) qinv[q[i]] = i;
      // Step 4.
      for (int local = 0; local < Pn; ++local) {
        const int p = n * Pn + local;
        slot_log[p] = minv[n * En + phy[qinv[local]]];
        slot_rank[p] = rank[qinv[local]];
      }
    }
    for (int p = 0; p < P; ++p) {
      out.phy2log[l * P + p] = slot_log[p];
      out.log2phy[(l * E + slot_log[p]) * W + slot_rank[p]] = p;
    }
    for (int e = 0; e < E; ++e) out.logcnt[l * E + e] = node_cnt[m[e]];
  }
  return out;
}

}  // namespace eplb::testing_reference

#endif  // EPLB_TESTS_CORE_REFERENCE_DEEPSEEK_H_
