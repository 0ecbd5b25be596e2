"""The one entity: a subscriber, joined on user_id (ids like 7590-VHVEG)."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A subscriber of the streaming service; user_id looks like 7590-VHVEG.",
)
