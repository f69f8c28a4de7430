"""smtpguard-logwatch: counts what every mail source does in the MTA's logs and
escalates against abusers (warn, slow down, refuse) until the penalty expires."""

__version__ = "0.1.0"
