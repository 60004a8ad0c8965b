// A persistent pool of worker threads for the CPU kernels. MLX runs each CPU
// op on its stream's one thread; the kernels split an op into tasks and run
// them here, the calling thread taking its share, so no thread is spawned per
// call.
#pragma once

#include <cstddef>
#include <functional>

namespace safeguard_kernels {

// Threads the kernels use in all, the caller included: SAFEGUARD_THREADS when
// set to a positive number, else the machine's hardware threads.
size_t thread_count();

// Runs task(0) … task(count - 1) across the pool and the calling thread and
// returns when all are done. Tasks are claimed in order from a shared counter,
// so the split does not depend on timing; which thread runs a task does not
// change its result.
void parallel_for(size_t count, const std::function<void(size_t)>& task);

}  // namespace safeguard_kernels
