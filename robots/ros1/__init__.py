"""ROS 1 bridge (rospy). rospy is imported lazily, only by :mod:`robots.ros1.bridge`."""
