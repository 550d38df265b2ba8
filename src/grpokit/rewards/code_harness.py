"""The trusted driver of one assert-style test case, run inside the sandbox (source in
``RUN_CASE``, written read-only to the harness directory).

How the pass is decided outside the program's control: the host writes a random nonce to
``.grpokit_nonce`` in the work directory. The driver reads and deletes it before any candidate
code runs, keeps it only inside a closure, runs the solution, then the test with a copy of the
builtins taken *before* the solution ran (so patching ``builtins`` does not reach the asserts),
and only then writes the nonce to ``.grpokit_result`` and leaves with ``os._exit(0)``. The host
counts a pass only for exit status 0 *and* the right nonce in that file: ``sys.exit(0)`` or
``os._exit(0)`` before the tests, an exception, or printing "PASSED" never writes it.

The candidate runs in the same interpreter as the driver, so the nonce is in its memory. An
audit hook refuses the usual ways to look for it when the solution or the test asks — gc object
walks, ctypes, /proc/self/mem, frames (``sys._getframe``, ``tb_frame``, ``inspect``), trace and
profile hooks — judged by the first frame outside ctypes/inspect/traceback, so libraries that
use these themselves (numpy loads ctypes; typing, enum, namedtuple, warnings read frames) work. A program that still digs the nonce out through some other route would be
the one way to forge a pass; that is the limit of any in-process test harness.
"""

NONCE_FILE = ".grpokit_nonce"
RESULT_FILE = ".grpokit_result"
SOLUTION_FILE = "solution.py"
TEST_FILE = "test.py"

RUN_CASE = r'''
import builtins
import os
import sys
import _thread

_UNTRUSTED = ("solution.py", "test.py")
_SENSITIVE_EVENTS = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                     "sys.settrace", "sys.setprofile", "sys._getframe")
_FRAME_ATTRIBUTES = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back")
# Modules that hand their caller what the event guards: the event is judged by the first frame
# beyond them. (traceback.py reads tb_frame to format a traceback, so it is not one for those.)
_PASS_THROUGH = ("/ctypes/", "/inspect.py", "/traceback.py")
_PASS_THROUGH_FOR_FRAME_ATTRIBUTES = ("/inspect.py",)


def _make_guard():
    getframe, inside = sys._getframe, _thread._local()

    def from_untrusted_code(pass_through):
        frame = getframe(2)  # 0: this function, 1: the guard, 2: where the event was raised
        while frame is not None and any(part in frame.f_code.co_filename for part in pass_through):
            frame = frame.f_back
        return frame is not None and frame.f_code.co_filename in _UNTRUSTED

    def guard(event, args):
        if getattr(inside, "on", False):
            return
        if event in _SENSITIVE_EVENTS or event.startswith("ctypes."):
            pass_through = _PASS_THROUGH
        elif event == "object.__getattr__" and args[1] in _FRAME_ATTRIBUTES:
            pass_through = _PASS_THROUGH_FOR_FRAME_ATTRIBUTES
        elif event == "open" and isinstance(args[0], (str, bytes)) and os.fsdecode(args[0]).startswith(
                ("/proc", "/dev/fd")):
            pass_through = _PASS_THROUGH
        else:
            return
        inside.on = True
        try:
            refused = from_untrusted_code(pass_through)
        finally:
            inside.on = False
        if refused:
            raise RuntimeError(f"forbidden by the sandbox harness: {event}")

    return guard


def _make_reporter(nonce):
    open_, write, close, leave = os.open, os.write, os.close, os._exit
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW

    def report():
        fd = open_("''' + RESULT_FILE + r'''", flags, 0o600)
        write(fd, nonce)
        close(fd)
        leave(0)

    return report


def _drive():
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "''' + SOLUTION_FILE + r'''"), encoding="utf-8") as handle:
        solution = compile(handle.read(), "''' + SOLUTION_FILE + r'''", "exec")
    with open(os.path.join(here, "''' + TEST_FILE + r'''"), encoding="utf-8") as handle:
        test = compile(handle.read(), "''' + TEST_FILE + r'''", "exec")
    with open("''' + NONCE_FILE + r'''", "rb") as handle:
        report = _make_reporter(handle.read())
    os.unlink("''' + NONCE_FILE + r'''")
    run, copy, pristine = exec, dict, dict(builtins.__dict__)
    sys.addaudithook(_make_guard())
    namespace = {"__name__": "solution", "__builtins__": builtins}
    run(solution, namespace)
    test_namespace = copy(namespace)
    test_namespace["__builtins__"] = pristine
    test_namespace["__name__"] = "__main__"
    run(test, test_namespace)
    report()


_drive()
'''
