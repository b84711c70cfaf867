"""Chaos harness: seeded fault schedules against real etcd members and participant
processes, recorded histories, and property checks over them (see README.md)."""
