"""medlens.preprocess"""
