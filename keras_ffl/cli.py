"""What every entry point does with errors: one line on stderr and a meaningful exit code."""

import sys

from keras_ffl.config import quiet_tensorflow
from keras_ffl.errors import ConfigError, DataError, HelpRequested, ResumeError, WriteError


def run_main(body):
    """Runs ``body()`` (which returns 0) and maps failures to exit codes.

    0 success or --help; 2 bad input (flags, configuration, data); 1 training diverged or the
    run directory could not be written.
    """
    quiet_tensorflow()
    try:
        return body()
    except HelpRequested as e:
        print(e)
        return 0
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, ResumeError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
