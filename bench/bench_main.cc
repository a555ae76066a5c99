// main() of the Google Benchmark programs (policy_bench, map_io_bench, ingest_bench).
#include <benchmark/benchmark.h>
#include <malloc.h>

int main(int argc, char** argv) {
  // A planner plans again and again in one long-lived process. Keep freed memory in the heap, as
  // such a process would after warming up: by default glibc returns the heap top to the kernel
  // after every plan, and on virtual machines the page faults of the next plan then cost more than
  // the planning itself.
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
