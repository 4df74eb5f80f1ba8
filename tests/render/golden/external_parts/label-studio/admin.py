import os

from rest_framework.authtoken.models import Token
from users.models import User

user = User.objects.get(email=os.environ["LABEL_STUDIO_USERNAME"])
password = os.environ["LABEL_STUDIO_PASSWORD"]
if not user.check_password(password):
    user.set_password(password)
    user.save(update_fields=["password"])
token = os.environ["LABEL_STUDIO_USER_TOKEN"]
Token.objects.filter(user=user).exclude(key=token).delete()
Token.objects.get_or_create(user=user, defaults={"key": token})
print(f"admin {user.email} ready")
