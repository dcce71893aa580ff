"""Kafka plumbing that does not depend on Faust: how clients connect, the protocol
requests aiokafka lacks (KIP-447, KIP-345), short probes, the topics and ACLs the
worker needs, and the agent registry.
"""
