"""Start a real MXNet parameter-server cluster on loopback for a test.

The scheduler, the servers and the workers are separate processes, as with
``mxnet/tools/launch.py``: each is a Python interpreter with ``DMLC_ROLE`` and the other
``DMLC_*`` variables set. Scheduler and servers run their loop at ``import mxnet``; each
worker runs the given source, which creates ``mx.kv.create('dist_sync')`` and prints one line
``RESULT <json>``. Every process is killed and reaped when the run ends, also on failure.

MXNet 1.9.1 workers that used a Gluon Trainer on a dist kvstore hang at interpreter exit
(the kvstore is torn down after the engine). The harness therefore appends an epilogue to
the worker source: a barrier on the worker's ``kv`` (so no worker leaves while another still
talks to the servers), then ``os._exit(0)``. A worker counts as done as soon as it has
printed its RESULT line, and every process is killed at the end, so an exit that still
hangs cannot fail a test.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


EPILOGUE = """
import os as _os, sys as _sys
if 'kv' in globals():
    kv._barrier()
_sys.stdout.flush()
_sys.stderr.flush()
_os._exit(0)
"""


class ClusterError(RuntimeError):
    """A worker failed, printed no result, or the cluster did not finish in time."""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _start(role, args, env, log):
    env = dict(env, DMLC_ROLE=role)
    return subprocess.Popen([sys.executable] + args, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_cluster(worker_source, workers=2, servers=1, timeout=120, extra_env=None):
    """Run ``worker_source`` on ``workers`` workers; returns their results, by rank order of
    start (each result is the JSON object the worker printed after ``RESULT``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('DMLC_')}
    env.update({
        'DMLC_PS_ROOT_URI': '127.0.0.1', 'DMLC_PS_ROOT_PORT': str(free_port()),
        'DMLC_NUM_SERVER': str(servers), 'DMLC_NUM_WORKER': str(workers),
        'DMLC_NODE_HOST': '127.0.0.1', 'DMLC_INTERFACE': 'lo',
        'PYTHONPATH': os.pathsep.join([REPO, env.get('PYTHONPATH', '')]).rstrip(os.pathsep),
        'OMP_NUM_THREADS': '1',
    })
    env.update(extra_env or {})
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, 'worker.py')
        with open(script, 'w') as f:
            f.write(worker_source + EPILOGUE)
        procs, logs = [], []

        def start(role, args):
            log = open(os.path.join(tmp, '%s%d.log' % (role, len(procs))), 'a+')  # O_APPEND: the child writes at the end whatever our read offset
            logs.append(log)
            procs.append(_start(role, args, env, log))
            return procs[-1], log

        try:
            start('scheduler', ['-c', 'import mxnet'])
            for _ in range(servers):
                start('server', ['-c', 'import mxnet'])
            pending = [start('worker', [script]) for _ in range(workers)]
            results, deadline = {}, time.monotonic() + timeout
            # A worker is done when it has printed its RESULT line: whether it then exits
            # cleanly does not matter (everything is killed below).
            while pending:
                for proc, log in list(pending):
                    lines = [l for l in _tail(log, lines=None).splitlines()
                             if l.startswith('RESULT ')]
                    if lines:
                        results[proc.pid] = json.loads(lines[-1][len('RESULT '):])
                        pending.remove((proc, log))
                    elif proc.poll() is not None:
                        raise ClusterError('a worker exited with %s before printing its '
                                           'RESULT:\n%s' % (proc.returncode, _tail(log)))
                if pending and time.monotonic() > deadline:
                    raise ClusterError('a worker printed no RESULT within %ds:\n%s'
                                       % (timeout, _tail(pending[0][1])))
                if pending:
                    try:
                        pending[0][0].wait(timeout=0.1)  # poll without busy-waiting
                    except subprocess.TimeoutExpired:
                        pass
            return [results[proc.pid] for proc in procs if proc.pid in results]
        finally:
            for proc in procs:
                _kill(proc)
            for log in logs:
                log.close()


def _tail(log, lines=40):
    log.flush()
    log.seek(0)
    text = log.read()
    return text if lines is None else '\n'.join(text.splitlines()[-lines:])
