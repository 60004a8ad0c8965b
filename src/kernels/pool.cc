#include "pool.h"

#include <atomic>
#include <cstdint>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace safeguard_kernels {

namespace {

size_t configured_threads() {
  if (const char* env = std::getenv("SAFEGUARD_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n > 0) return static_cast<size_t>(n);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : hw;
}

class Pool {
 public:
  explicit Pool(size_t threads) {
    for (size_t i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  size_t size() const { return workers_.size() + 1; }

  void run(size_t count, const std::function<void(size_t)>& task) {
    if (count == 0) return;
    if (workers_.empty() || count == 1) {
      for (size_t i = 0; i < count; ++i) task(i);
      return;
    }
    // One batch at a time: MLX may call in from more than one stream thread.
    std::lock_guard<std::mutex> batch(batch_mutex_);
    Batch batch_now;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++generation_;
      batch_now = Batch{&task, count, generation_};
      current_ = batch_now;
      pending_ = count;
      next_.store(uint64_t(generation_) << 32);
    }
    wake_.notify_all();
    drain(batch_now);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  struct Batch {
    const std::function<void(size_t)>* task = nullptr;
    size_t count = 0;
    uint32_t generation = 0;
  };

  // Claims and runs tasks of `batch` until none are left. The counter carries
  // the batch's generation in its high half, so a worker that wakes late
  // cannot claim an index of a later batch as if it were its own.
  void drain(const Batch& batch) {
    size_t finished = 0;
    for (;;) {
      uint64_t claim = next_.load();
      do {
        if ((claim >> 32) != batch.generation || (claim & 0xffffffffu) >= batch.count) claim = ~uint64_t(0);
      } while (claim != ~uint64_t(0) && !next_.compare_exchange_weak(claim, claim + 1));
      if (claim == ~uint64_t(0)) break;
      (*batch.task)(claim & 0xffffffffu);
      ++finished;
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_ -= finished;
      if (pending_ == 0) done_.notify_all();
    }
  }

  void work() {
    uint32_t seen = 0;
    for (;;) {
      Batch batch;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        batch = current_;
      }
      drain(batch);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex batch_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  Batch current_;
  std::atomic<uint64_t> next_{0};
  size_t pending_ = 0;
  uint32_t generation_ = 0;
  bool stopping_ = false;
};

Pool& pool() {
  // Leaked on purpose: joining workers from a static destructor at exit can
  // deadlock with MLX's own teardown.
  static Pool* instance = new Pool(configured_threads());
  return *instance;
}

}  // namespace

size_t thread_count() { return pool().size(); }

void parallel_for(size_t count, const std::function<void(size_t)>& task) { pool().run(count, task); }

}  // namespace safeguard_kernels
