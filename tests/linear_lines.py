"""Hostile line shapes for every parser line type: each template has one ``{X}`` slot
(a client-controlled field) that the linearity tests fill with a long run of the
markers that parser searches for."""

from __future__ import annotations

V = "203.0.113.9"
R = "192.0.2.10"
MID = "1uA2dT-000000002ZZ-3c4D"
QID = "6229001A3001"

# (program, message template)
POSTFIX = [
    ("postfix/smtpd", "connect from {X}[192.0.2.10]"),
    ("postfix/smtpd", "disconnect from h[192.0.2.10] ehlo=1 {X} commands=1"),
    ("postfix/smtpd", "NOQUEUE: reject: RCPT from h[192.0.2.10]: 550 5.1.1 <{X}>: Recipient "
                      "address rejected: User unknown; from=<{X}> to=<{X}> proto=ESMTP "
                      "helo=<{X}>"),
    ("postfix/smtpd", "NOQUEUE: reject: EHLO from h[192.0.2.10]: 504 5.5.2 <{X}>: Helo command "
                      "rejected: need fully-qualified hostname; proto=SMTP helo=<{X}>"),
    ("postfix/smtpd", "ABCDEF1234: client=h[192.0.2.10], sasl_method=PLAIN, "
                      "sasl_username={X}, sasl_sender={X}"),
    ("postfix/smtpd", "warning: unknown[192.0.2.10]: SASL LOGIN authentication failed: {X}, "
                      "sasl_username={X}"),
    ("postfix/smtpd", "warning: non-SMTP command from h[192.0.2.10]: {X}"),
    ("postfix/smtpd", "lost connection after {X} from h[192.0.2.10]"),
    ("postfix/qmgr", "ABCDEF1234: from=<{X}>, size=10, nrcpt=1 (queue active)"),
    ("postfix/smtp", "ABCDEF1234: to=<{X}>, relay=mx[198.51.100.1]:25, delay=1, "
                     "delays=0/0/0/1, dsn=5.1.1, status=bounced (host said: {X})"),
    ("postfix/cleanup", "ABCDEF1234: reject: header Subject: {X} from h[192.0.2.10]; "
                        "from=<{X}> to=<{X}> proto=ESMTP helo=<{X}>: 5.7.1 no"),
    ("postfix/postscreen", "PREGREET 11 after 0.1 from [192.0.2.10]:4711: {X}"),
    ("postfix/postscreen", "NOQUEUE: reject: RCPT from [192.0.2.10]:4711: 550 5.7.1 Service "
                           "unavailable; client [192.0.2.10] blocked using zen; from=<{X}>, "
                           "to=<{X}>, proto=ESMTP, helo=<{X}>"),
]
POSTFIX_FILL = ["; from=<", "; proto=", ">: ", "<", ", orig_client=x[203.0.113.9]",
                ", sasl_sender=", "[203.0.113.9]", '"', "from=<a> to=<b> proto=ESMTP helo=<"]

EXIM = [
    ("exim", "SMTP connection from ({X}) [192.0.2.10]:4000 I=[192.0.2.25]:25 (TCP/IP "
             "connection count = 1)"),
    ("exim", "login authenticator failed for ({X}) [192.0.2.10]:4000: 535 Incorrect "
             "authentication data (set_id={X})"),
    ("exim", "H=({X}) [192.0.2.10]:4000 F=<{X}> rejected RCPT <{X}>: {X}"),
    ("exim", "H=({X}) [192.0.2.10]:4000 sender verify fail for <{X}>: {X}"),
    ("exim", MID + " <= {X} H=({X}) [192.0.2.10]:4000 P=esmtp S=10 id={X} T=\"{X}\" for {X}"),
    ("exim", MID + " <= {X}@x H=({X}) [192.0.2.10]:4000 P=esmtp S=10 id={X} for {X}"),
    ("exim", MID + " => {X} R=r T=t H=mx [198.51.100.1]"),
    ("exim", MID + " ** {X} R=r T=t: SMTP error: {X}"),
    ("exim", MID + " SA: Action: silently tossed message: {X} From <{X}> (host=h [192.0.2.10]) "
                   "for {X}"),
    ("exim", MID + " F=<{X}> H=({X}) [192.0.2.10] rejected by local_scan(): {X}"),
    ("exim", "no MAIL in SMTP connection from ({X}) [192.0.2.10]:4000 D=1s C=EHLO,QUIT"),
    ("exim", "SMTP call from ({X}) [192.0.2.10]:4000 dropped: too many nonmail commands "
             "(last was \"{X}\")"),
    ("exim", "SMTP protocol error in \"{X}\" H=({X}) [192.0.2.10]:4000 AUTH command used when "
             "not advertised"),
    ("exim", "SMTP protocol synchronization error (next input sent too soon: pipelining was "
             "not advertised): rejected \"{X}\" H=({X}) [192.0.2.10]:4000 next input=\"{X}\""),
    ("exim", "rejected EHLO from ({X}) [192.0.2.10]:4000: syntactically invalid argument(s): "
             "{X}"),
    ("exim", "no IP address found for host {X} (during SMTP connection from ({X}) "
             "[192.0.2.10]:4000)"),
    ("exim", "Connection from ({X}) [192.0.2.10]:4000 refused: too many connections from that "
             "IP address"),
    ("exim", "unexpected disconnection while reading SMTP command from ({X}) [192.0.2.10]:4000"),
    ("exim", "rejected MAIL FROM:<{X}> H=(h) [192.0.2.10]:4000: message too big: size=9 max=1"),
    ("exim", MID + " rejected from <a@b> H=({X}) [192.0.2.10]:4000 U={X}: message too big: "
             "read=9 max=1"),
]
EXIM_FILL = [") [203.0.113.9] ", ") [203.0.113.9]:1: ", '" H=(x) [203.0.113.9] ', " H=", "(",
             "[", '"', " (host=h [203.0.113.9]) for ", " A=b", "=\"", ") [", " From <",
             "> H=(x) [203.0.113.9]:1: message too big: size=1 max=1 "]

SENDMAIL = [
    ("sm-mta", QID + ": from=<{X}>, size=10, class=0, nrcpts=1, msgid=<{X}>, proto=ESMTP, "
                     "daemon=MTA, relay=h [192.0.2.10]"),
    ("sm-mta", QID + ": to=<{X}>,<{X}>, delay=00:00:01, xdelay=00:00:01, mailer=esmtp, "
                     "pri=1, relay=mx [198.51.100.1], dsn=5.0.0, stat={X}"),
    ("sm-mta", QID + ": ruleset=check_rcpt, arg1=<{X}>, relay=h [192.0.2.10], reject=550 "
                     "5.1.1 <{X}>... User unknown"),
    ("sm-mta", QID + ": ruleset=check_mail, arg1={X}, relay=h [192.0.2.10], reject=553 {X}"),
    ("sm-mta", QID + ": <{X}>... User unknown"),
    ("sm-mta", QID + ": Milter: to=<{X}>, reject=550 {X}"),
    ("sm-mta", QID + ": AUTH failure (LOGIN): {X}, user={X}, relay=h [192.0.2.10]"),
    ("sm-mta", QID + ": AUTH=server, relay=h [192.0.2.10], authid={X}, mech=PLAIN, bits=0"),
    ("sm-mta", QID + ": h [192.0.2.10]: possible SMTP attack: command={X}, count=5"),
    ("sm-mta", QID + ": lost input channel from {X} [192.0.2.10] to MTA after {X}"),
    ("sm-mta", QID + ": h [192.0.2.10]: {X} [rejected]"),
    ("sm-mta", "rejecting commands from {X} [192.0.2.10] due to pre-greeting traffic"),
]
SENDMAIL_FILL = [", relay=[203.0.113.9], reject=", ", relay=", "\\303", "\\\\", "<", '"',
                 ", user=", ", stat=", ", delay=", ", ctladdr=", "[203.0.113.9]", ", "]

ALL = {"postfix": (POSTFIX, POSTFIX_FILL), "exim": (EXIM, EXIM_FILL),
       "sendmail": (SENDMAIL, SENDMAIL_FILL)}


def filled(template: str, fill: str, size: int) -> str:
    """The template with every slot holding ``fill`` repeated to about ``size`` bytes
    in all (the slots share it)."""
    slots = max(template.count("{X}"), 1)
    run = fill * max(1, size // (len(fill) * slots))
    return template.replace("{X}", run)
