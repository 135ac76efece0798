import logging
import os
import sys

from workers.cli import main

rc = main()
# Everything is committed by now. Skip the interpreter's teardown of torch and friends,
# which can take seconds (tens of seconds on a busy machine) after a SIGTERM.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(rc)
