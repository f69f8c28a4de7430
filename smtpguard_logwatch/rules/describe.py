"""Plain-English explanation of a RuleSet: what ``smtpguard-logwatch check`` prints, so
an admin can confirm the rules say what they meant before anything is enforced."""

from __future__ import annotations

from .conditions import fmt_duration, fmt_number
from .model import Ladder, LadderStep, Rule, RuleSet
from .vocab import DEFAULT_HALF_LIFE, DIMENSION_NOUN, DIMENSIONS


def _noun(dimension: str) -> str:
    return DIMENSION_NOUN.get(dimension, dimension)


def describe_rule(rule: Rule) -> str:
    pts = fmt_number(rule.points)
    if rule.temporary_for is not None:
        add = f"add {pts} temporary points (gone after {fmt_duration(rule.temporary_for)})"
    else:
        add = f"add {pts} points"
    lines = [f"Rule {rule.name} ({rule.location}): for each {_noun(rule.dimension)},",
             f"  when {rule.description},",
             f"  {add}, at most once every {fmt_duration(rule.every)}."]
    if rule.cap_action is not None:
        lines.append(f"  Suspicion only: its points never take the key past "
                     f"'{rule.cap_action}' on their own.")
    if rule.baseline_min_history is not None or rule.baseline_floor is not None:
        parts = []
        if rule.baseline_min_history is not None:
            parts.append(f"needs {fmt_duration(rule.baseline_min_history)} of history")
        if rule.baseline_floor is not None:
            parts.append(f"is taken as at least {fmt_number(rule.baseline_floor)}")
        lines.append(f"  The usual rate {' and '.join(parts)}.")
    if rule.history is None:
        lines.append("  Acts from the first line (needs no history).")
    else:
        lines.append(f"  Waits for the warm-up: {rule.history}.")
    return "\n".join(lines)


def _action(action: str, argument: float | None) -> str:
    if action == "notify":
        return "notify the admin"
    if action == "delay":
        return f"delay its SMTP replies by {fmt_duration(argument or 0)}"
    if action == "throttle":
        return f"throttle it to {fmt_number(round(argument or 0, 3))} messages per minute"
    if action == "defer":
        return "defer its mail (4xx, senders retry later)"
    if action == "hold":
        return "put its mail on hold for the admin to review"
    if action == "refuse":
        return "refuse it (5xx)"
    return action


def _step(step: LadderStep) -> str:
    out = f"at {fmt_number(step.points)} points {_action(step.action, step.argument)}"
    if step.duration is not None:
        out += f" for {fmt_duration(step.duration)}"
    elif step.action != "notify":
        out += " while its points stay that high"
    return out


def describe_ladder(ladder: Ladder) -> str:
    lines = [f"Ladder for each {_noun(ladder.dimension)} ({ladder.location}):"]
    lines += [f"  {_step(s)};" for s in ladder.steps]
    if ladder.repeat_action is not None:
        out = (f"  a repeat offender (reaching the top step again within "
               f"{fmt_duration(ladder.repeat_within or 0)}): "
               f"{_action(ladder.repeat_action, ladder.repeat_argument)}")
        if ladder.repeat_duration is not None:
            out += f" for {fmt_duration(ladder.repeat_duration)}"
        if ladder.repeat_growth == 2:
            out += ", doubling each further time"
        elif ladder.repeat_growth != 1:
            out += f", {fmt_number(ladder.repeat_growth)} times longer each further time"
        if ladder.repeat_max is not None:
            out += f", at most {fmt_duration(ladder.repeat_max)}"
        lines.append(out + ";")
    if ladder.extend_on_activity is not None:
        lines.append(f"  activity while penalised keeps the penalty going until at least "
                     f"{fmt_duration(ladder.extend_on_activity)} after the last event;")
    if ladder.enforce_only is not None:
        lines.append(f"  steps beyond notify are enforced only where "
                     f"{ladder.enforce_only_text}; elsewhere they only notify.")
    if ladder.simulate:
        lines.append("  SIMULATION: these decisions are recorded and mailed, never enforced.")
    lines[-1] = lines[-1].rstrip(";") + ("" if lines[-1].endswith(".") else ".")
    return "\n".join(lines)


def describe_allowlist(ruleset: RuleSet) -> str:
    a = ruleset.allowlist
    parts = []
    if a.networks:
        parts.append("networks " + ", ".join(str(n) for n in a.networks))
    if a.senders:
        parts.append("senders " + ", ".join(a.senders.items()))
    if a.sasl_users:
        parts.append("SASL users " + ", ".join(a.sasl_users.items()))
    if a.recipient_domains:
        parts.append("recipient domains " + ", ".join(a.recipient_domains.items()))
    if not parts:
        return "Allowlist: empty — every source can be penalised."
    return "Never penalised, whatever the rules say:\n" + "\n".join(f"  {p}" for p in parts)


def describe_decay(ruleset: RuleSet) -> str:
    hl = ruleset.decay_half_life
    base = hl.get("*", DEFAULT_HALF_LIFE)
    out = f"Points halve every {fmt_duration(base)}"
    if "*" not in hl:
        out += " (built-in default)"
    extra = [f"{_noun(d)}: every {fmt_duration(v)}" for d, v in sorted(hl.items()) if d != "*"]
    if extra:
        out += "; " + "; ".join(extra)
    return out + "."


def describe(ruleset: RuleSet) -> str:
    """The whole rule set in plain English. Warnings are not part of it: ``check``
    prints them once, on stderr, where a script tells them from the description."""
    blocks = [describe_allowlist(ruleset), describe_decay(ruleset)]
    blocks += [describe_rule(r) for r in ruleset.rules]
    order = [d for d in DIMENSIONS if d in ruleset.ladders]
    blocks += [describe_ladder(ruleset.ladders[d]) for d in order]
    return "\n\n".join(blocks) + "\n"
