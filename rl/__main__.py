import faulthandler
import signal

from .cli import main

if hasattr(signal, "SIGUSR1"):  # a run that seems stuck: `kill -USR1 PID` prints every thread's stack, and it goes on
    faulthandler.register(signal.SIGUSR1, all_threads=True)
raise SystemExit(main())
