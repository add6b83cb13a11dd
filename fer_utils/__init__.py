"""fer_utils: the reusable code behind the fer-notebooks tutorial series.

One module per step of the work: ``data`` (obtain, verify and audit the dataset; work folders and run
records), ``folders`` (manifest, person-disjoint split, class folders), ``pipelines``, ``models``,
``training``, ``evaluation``, ``prediction``; ``runner`` executes the numbered notebooks with papermill.
"""

import contextlib
import os

__version__ = "0.1.0"

EMOTIONS = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


@contextlib.contextmanager
def quiet_fd2():
    """Silence C-level stderr (file descriptor 2) for the duration of the block.

    TensorFlow 2.21 prints a few C++ log lines at import ("oneDNN custom operations are on",
    "Could not find cuda drivers") that ignore ``TF_CPP_MIN_LOG_LEVEL``. Python-level errors are
    unaffected: they are raised, not printed, inside the block.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


#: What ``import_tensorflow`` set up before TensorFlow's runtime started (see ``_start_devices``): ``error`` is why
#: the cluster could not be joined, ``logical_cpus_error`` why ``$FER_LOGICAL_CPUS`` was not applied.
STARTUP = {"started": False, "logical_cpus": None, "logical_cpus_error": None, "multi_worker_wanted": False,
           "multi_worker": None, "error": None}


def logical_cpus(text: str) -> int:
    """``$FER_LOGICAL_CPUS`` as a number of logical CPU devices (at least 1), or a ``ValueError`` that says what
    was wrong and what to do."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"FER_LOGICAL_CPUS={text!r} is not a whole number of logical CPU devices of at least 1: "
                         "set it to 2 to try strategy 'mirrored' on a machine without GPUs, or unset it.")
    return n


def _start_devices(tf) -> None:
    """Device set-up that TensorFlow only allows before its runtime starts (once per process).

    - ``$FER_LOGICAL_CPUS=n``: split the CPU into ``n`` logical devices, so ``MirroredStrategy`` can be
      tried on a machine without GPUs (``training.get_strategy("mirrored")``). A value that is not a whole
      number of at least 1 is not applied (TensorFlow would start with no CPU at all): it is recorded in
      ``STARTUP["logical_cpus_error"]``, which ``get_strategy("mirrored")`` raises.
    - ``$TF_CONFIG`` (a cluster, as every ``tf.distribute`` launcher sets it), when multi-worker training was
      asked for (``training.get_strategy("multi_worker")`` before TensorFlow started, as ``python -m fer_utils
      train -p strategy multi_worker`` does): create the process's ``MultiWorkerMirroredStrategy`` now,
      because it configures collective ops, which TensorFlow refuses once the runtime runs. Not otherwise:
      joining a cluster waits for every worker. A failure is recorded in ``STARTUP["error"]``, which
      ``get_strategy("multi_worker")`` reports.
    """
    if STARTUP["started"]:
        return
    STARTUP["started"] = True
    n = os.environ.get("FER_LOGICAL_CPUS", "").strip()
    if n:
        try:
            count = logical_cpus(n)
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
            STARTUP["logical_cpus"] = count
        except ValueError as err:
            STARTUP["logical_cpus_error"] = str(err)
        except RuntimeError as err:
            STARTUP["logical_cpus_error"] = f"FER_LOGICAL_CPUS={n!r}: {type(err).__name__}: {err}"
    if os.environ.get("TF_CONFIG") and STARTUP["multi_worker_wanted"]:
        from fer_utils.cluster import check_tf_config

        try:
            check_tf_config()  # TensorFlow's own errors for a bad TF_CONFIG are tracebacks from deep inside
            STARTUP["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError, tf.errors.OpError) as err:  # reported by get_strategy("multi_worker")
            STARTUP["error"] = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


def import_tensorflow():
    """Import TensorFlow and Keras without the C++ start-up log lines; returns ``(tf, keras)``.

    Keeps oneDNN on (bfloat16 on CPU runs through it); only the log lines are hidden. The first call also
    does the device set-up that must precede TensorFlow's runtime (``_start_devices``).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_fd2():
        import keras
        import tensorflow as tf

        if not STARTUP["started"]:
            _start_devices(tf)
            if STARTUP["error"] is None:  # a cluster that failed to join left the runtime unable to start
                tf.constant(0)  # initialise the runtime here, where its log lines are silenced
    tf.get_logger().setLevel("ERROR")
    return tf, keras


# A notebook starts TensorFlow itself (its Setup cell) after `import fer_utils`: a CPU split asked for in the
# environment is made here, at import, or it could not be made at all (a cluster waits for
# `training.get_strategy("multi_worker")`, which must come first).
if os.environ.get("FER_LOGICAL_CPUS", "").strip() and not os.environ.get("TF_CONFIG"):
    import_tensorflow()
