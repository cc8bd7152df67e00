"""medlens.evaluate"""
