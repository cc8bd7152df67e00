"""medlens.data"""
