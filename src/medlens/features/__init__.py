"""medlens.features"""
