"""The phone side: the toolchain that builds the demo APK without Gradle, the build pipeline
(`apk`), the adb logic that puts app and bundle on a phone (`install`), and Google AI Edge Gallery (`gallery`).

See ../shared/design/ANDROID.md for the facts these modules rely on.
"""
