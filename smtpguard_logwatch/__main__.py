"""``python -m smtpguard_logwatch`` is the same as the ``smtpguard-logwatch`` command."""

from smtpguard_logwatch.cli import main

raise SystemExit(main())
