"""medlens.infer"""
