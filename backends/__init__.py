"""einc.backends"""
