"""einc's intermediate representations: one frozen dataclass family per pipeline stage.

text --grammar--> Program (ir.program) --build--> RegionGraph (ir.region_graph)
     --verify--> same graph + diagnostics --layer--> LayeredCircuit (ir.layers)
     --lower--> Plan (ir.plan) --backend--> values
"""
