"""Hardware cost of voters: unit counts, generated Verilog, Yosys synthesis, Icarus check, report.

* :mod:`.units`: the seed's per-layer table (XNOR, popcount / voter units, real ops left).
* :mod:`.design` + :mod:`.rtl`: one output unit as Verilog, from the resolved ``Hierarchy``.
* :mod:`.synth`: Yosys with the anchors' script (``notes/synthesis-anchors.md``), cached.
* :mod:`.check`: iverilog simulation compared with :func:`bitvote.voter.reduce_votes`.
* :mod:`.report`: accuracy JSON joined with units x synthesized cost per unit.

See ``docs/hardware.md``.
"""

from .design import Design, make_design

__all__ = ["Design", "make_design"]
