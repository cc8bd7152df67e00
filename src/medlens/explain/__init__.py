"""medlens.explain"""
