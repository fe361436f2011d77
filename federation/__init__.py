"""The protocol layer both daemons share: the plan, the wire codec, one site's secure-aggregation round."""
