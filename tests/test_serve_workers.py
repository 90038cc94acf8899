"""nemo_trt.serve.workers: reused daemon threads, never a job waiting behind another."""
import threading

from nemo_trt.serve.workers import Workers


def _wait_idle(workers: Workers, n: int) -> None:
    for _ in range(1000):
        with workers._lock:
            if workers._idle == n:
                return
        threading.Event().wait(0.005)
    raise AssertionError(f"idle never reached {n}")


def test_sequential_jobs_reuse_one_thread():
    workers = Workers("t")
    names = []
    for _ in range(5):
        done = threading.Event()
        workers.submit(lambda d: (names.append(threading.current_thread().name), d.set()), done)
        assert done.wait(5)
        _wait_idle(workers, 1)
    assert workers.started == 1
    assert names == ["t-1"] * 5
    assert threading.current_thread().name not in names


def test_concurrent_jobs_never_wait_for_a_busy_thread():
    workers = Workers("t")
    release = threading.Event()
    running = threading.Semaphore(0)

    def blocking(_):
        running.release()
        release.wait(10)

    for i in range(4):  # all four must run at once: a bounded pool would deadlock here
        workers.submit(blocking, i)
    for _ in range(4):
        assert running.acquire(timeout=5)
    assert workers.started == 4
    release.set()
    _wait_idle(workers, 4)
    got = []
    done = threading.Event()
    workers.submit(lambda: (got.append(1), done.set()))
    assert done.wait(5) and got == [1]
    assert workers.started == 4  # the idle threads took it


def test_a_failing_job_keeps_its_thread(capsys):
    workers = Workers("t")

    def boom():
        raise RuntimeError("job failed")

    workers.submit(boom)
    _wait_idle(workers, 1)
    done = threading.Event()
    workers.submit(done.set)
    assert done.wait(5)
    assert workers.started == 1
    assert "job failed" in capsys.readouterr().err


def test_threads_are_daemons():
    workers = Workers("t")
    seen = []
    done = threading.Event()
    workers.submit(lambda: (seen.append(threading.current_thread().daemon), done.set()))
    assert done.wait(5) and seen == [True]
