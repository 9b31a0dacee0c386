"""What every entry point does with errors: one line on stderr and a meaningful exit code."""

import sys

from keras_ffl import backend
from keras_ffl.backend import quiet_tensorflow
from keras_ffl.errors import ConfigError, DataError, HelpRequested, ResumeError, UsageError, WriteError


def run_main(body, backend_from_flags=False, keras_now=True):
    """Runs ``body()`` (which returns 0) and maps failures to exit codes.

    0 success or --help; 2 bad input (flags, configuration, data); 1 training diverged or the
    run directory could not be written; 130 Ctrl-C (one line, no traceback).  Unless the entry
    point chooses the backend from its own flags (``backend_from_flags``), Keras is pointed at
    an installed backend first: it picks one once, on import, and would otherwise try
    TensorFlow where only JAX is installed.
    With ``keras_now`` it is also imported then, quietly: TensorFlow 2.21 prints its C++
    start-up lines (oneDNN, absl) whatever ``TF_CPP_MIN_LOG_LEVEL`` says.
    """
    quiet_tensorflow()
    try:
        if not backend_from_flags and backend.running() is None:
            if keras_now:
                backend.import_quietly(backend.resolve())
            else:
                backend.activate(backend.resolve())
        return body()
    except HelpRequested as e:
        print(e)
        return 0
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, ResumeError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the body's own clean-up (partial files, the lock) has run
        print("interrupted", file=sys.stderr)
        return 130
