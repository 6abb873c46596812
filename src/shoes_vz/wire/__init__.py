"""Generated protobuf/gRPC code (`make proto`; never edited) and the conversions in `convert.py`."""
