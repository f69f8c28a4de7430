# /etc/cron.d/smtpguard-logwatch: cron mode, for hosts that do not run the daemon.
# Does nothing while smtpguard-logwatch.service is enabled or running under systemd
# (the daemon scans and reconciles itself); `systemctl disable --now
# smtpguard-logwatch` switches this host to cron mode. See README.Debian.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
@reboot    root  [ -x /usr/libexec/smtpguard-logwatch/cron ] && /usr/libexec/smtpguard-logwatch/cron reconcile >/dev/null
* * * * *  root  [ -x /usr/libexec/smtpguard-logwatch/cron ] && /usr/libexec/smtpguard-logwatch/cron reconcile >/dev/null
* * * * *  root  [ -x /usr/libexec/smtpguard-logwatch/cron ] && /usr/libexec/smtpguard-logwatch/cron scan >/dev/null
