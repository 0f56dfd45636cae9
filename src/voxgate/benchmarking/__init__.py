"""The benchmark suite behind `voxgate bench` (see docs/benchmarks.md).

A gateway sits on the audio path of every conversation, so its cost must be close to nothing.
These modules measure that cost against two baselines on the same machine in the same run:
talking to the upstream directly, and a raw byte-forwarding relay (the least a Python proxy
can do). Every party runs in its own process so CPU and memory are attributed per process:

- `echo_upstream`: a minimal OpenAI-Realtime-GA-speaking server that echoes input audio back
  as output audio deltas;
- `raw_relay`: the baseline proxy, `websockets` in and out, no parsing;
- `gateway_proc`: voxgate itself (the real app under the real uvicorn server);
- `loadgen`: N concurrent real-time sessions that time every frame's round trip from a stamp
  written into the PCM bytes, and sample the other processes' CPU and RSS.

`relay`, `memory`, `connect` and `cascade` orchestrate one benchmark each; `report` prints the
tables and writes the JSON results.
"""
