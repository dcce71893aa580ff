"""The held state on disk: RocksDB per partition, written behind the commit.

Imports the core only; knows Faust's table just as "something with a RocksDB per
partition and a changelog topic name".
"""
