"""medlens.privacy"""
