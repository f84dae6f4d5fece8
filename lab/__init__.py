"""A lab bench for trying ExfilGuard without hardware: loop-device "USB sticks".

Used by `exfilguard demo`, the benchmarks and the tests; not part of the agent.
"""
