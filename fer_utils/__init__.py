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
def _quiet_fd2():
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


def import_tensorflow():
    """Import TensorFlow and Keras without the C++ start-up log lines; returns ``(tf, keras)``.

    Keeps oneDNN on (bfloat16 on CPU runs through it); only the log lines are hidden.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_fd2():
        import keras
        import tensorflow as tf

        tf.constant(0)  # initialise the runtime here, where its log lines are silenced
    tf.get_logger().setLevel("ERROR")
    return tf, keras
