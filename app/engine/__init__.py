"""The batch engine: fetched batches in, merged records and one commit per interval out.

No Faust here. It sees the consumer group through a port (`ports.GroupPort`) and
produces with the aiokafka producer it is given; it imports the core and the state.
"""
