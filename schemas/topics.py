"""Topic names. Every message is keyed by the organization it concerns."""

CRM_EVENTS = "crm.events"
CRM_COMMANDS = "crm.commands"
ECM_EVENTS = "ecm.events"
ECM_COMMANDS = "ecm.commands"

DATA_TOPICS = (CRM_EVENTS, ECM_COMMANDS, ECM_EVENTS, CRM_COMMANDS)

# Operator decisions for the bridge (pause/resume per direction), keyed by direction;
# one partition so every worker reads them in order; compacted in production.
BRIDGE_CONTROL = "bridge.control"


def dead_letter_topic(source_topic: str) -> str:
    return f"{source_topic}.dlq"


DEAD_LETTER_TOPICS = tuple(dead_letter_topic(t) for t in DATA_TOPICS)
ALL_TOPICS = DATA_TOPICS + DEAD_LETTER_TOPICS + (BRIDGE_CONTROL,)


def provisioning(partitions: int) -> dict[str, int]:
    """Every topic with its partition count, as created at start-up."""
    return {**{t: partitions for t in DATA_TOPICS + DEAD_LETTER_TOPICS}, BRIDGE_CONTROL: 1}
