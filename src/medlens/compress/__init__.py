"""medlens.compress"""
