"""medlens.augment"""
