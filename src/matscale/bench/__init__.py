"""``matscale bench``: a model, its teachers and GFN2-xTB scored against references no one
here computed (all-electron equations of state, coupled-cluster interaction energies), with
each one's speed."""
